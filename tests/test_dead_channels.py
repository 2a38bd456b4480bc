"""eliminate-dead-channels keeps its contract: the pruned network equals the masked one on generated graphs
and on the zoo, with random masks and random norm parameters (beta != 0), measured in float64 (1e-7 x max|y|:
the algebra is exact, only re-association rounding remains, plus what the masked network itself does with
rounding of that size when it is ill-conditioned, measured on it: :func:`_rounding_sensitivity`); removes
exactly the channels the masks kill (params and MACs checked against the architecture formula); and removes
nothing without a proof (a channel that random probes would call dead is kept; every removed unit is reported
with its proof)."""
import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given, strategies as st
from strategies import generator_nets

import gcompiler
from gcompiler.deploy.measure import rel_error
from gcompiler.fx.utils import random_inputs


def _randomize_norms(gm, seed):
    g = torch.Generator().manual_seed(seed)
    for m in gm.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))  # beta != 0: dead channels are constants


def _kill_random_units(gm, seed, frac=0.5, keep_one=False):
    g = torch.Generator().manual_seed(seed)
    killed = {}
    for name, mk in gcompiler.masks(gm).items():
        dead = torch.rand(mk.shape, generator=g) < frac
        if keep_one:
            dead[0] = False
        with torch.no_grad():
            mk[dead] = 0
        killed[name] = int(dead.sum())
    return killed


TOL = 1e-7  # float64; the largest error seen on well-conditioned graphs is ~4e-9 (carrier ratios)
NOISE_FACTOR = 10  # the pruned net may amplify its re-association rounding up to 10x what the masked net does


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _rounding_sensitivity(gm, x, ref=None, draws=3):
    """How far the network's output moves (relative to max|y|) when every parameter and buffer is moved by a
    few ulps: the size of the change re-association alone can make.

    Tiny on a well-conditioned net (~1e-15 in float64). A dead input reaching a chain of affine-free
    InstanceNorms is not one: each normalizes the rounding noise of a constant (mathematically 0) by
    1/sqrt(eps) (~316x), four of them reach ~1e-6, and then the masked reference and the pruned net both
    compute noise that exact arithmetic would make a constant (a seed-177 generated graph on the ci profile).
    ``ref`` is ``gm(*x)`` when the caller has it already.
    """
    if ref is None:
        with torch.no_grad():
            ref = gm(*x)
    worst = 0.0
    for k in range(draws):
        moved = copy.deepcopy(gm)
        g = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for t in list(moved.parameters()) + list(moved.buffers()):
                if t.is_floating_point():
                    ulps = 4 * torch.finfo(t.dtype).eps * (torch.rand(t.shape, generator=g, dtype=t.dtype) * 2 - 1)
                    t.mul_(1 + ulps)
            out = moved(*x)
        worst = max([worst] + [rel_error(r, o) for o, r in zip(_as_tuple(out), _as_tuple(ref))])
    return worst


def _masked_vs_pruned(gm):
    """Eliminate on a copy of ``gm`` (float64); returns (relative error, its bound, params before, params after,
    slim). The bound is :data:`TOL` plus :data:`NOISE_FACTOR` x the masked net's :func:`_rounding_sensitivity`.

    ``gm`` itself is never touched by the pass, so the reference output and the "before" numbers are
    measured on the masked network, whatever ``compile`` does with its argument."""
    # float64: the check then measures the pass's algebra, not float32 rounding of random nets
    gm.double()
    x = tuple(t.double() for t in random_inputs(gm, seed=3))
    gcompiler.propagate_shapes(gm, *x)  # records float64 input specs for the pass's own evaluations
    gm.eval()
    with torch.no_grad():
        ref = gm(*x)
    n_params = gcompiler.profile(gm).params
    est = gcompiler.estimate(gm)
    slim = gcompiler.compile(copy.deepcopy(gm), "eliminate-dead-channels", verify="lint")
    slim.eval()
    with torch.no_grad():
        out = slim(*x)
        again = gm(*x)
    refs, outs, agains = [_as_tuple(t) for t in (ref, out, again)]
    assert all(torch.equal(a, r) for a, r in zip(agains, refs)), "the masked network changed"
    prof = gcompiler.profile(slim)
    assert (prof.macs, prof.params) == (est.macs, est.params)  # the cost model priced it exactly
    err = max(rel_error(r, o) for o, r in zip(outs, refs))
    bound = TOL + NOISE_FACTOR * _rounding_sensitivity(gm, x, ref)
    return err, bound, n_params, gcompiler.profile(slim).params, slim


@given(net=generator_nets(allow_unknown=True), seed=st.integers(0, 10_000))
def test_exact_on_generated_graphs(net, seed):
    module, x = net
    gm = gcompiler.trace(module, x)
    gm = gcompiler.compile(gm, "insert-masks", verify="numeric")
    _randomize_norms(gm, seed)
    _kill_random_units(gm, seed)
    err, bound, before, after, slim = _masked_vs_pruned(gm)
    assert err <= bound
    report = slim.meta["dead_channels"]
    assert len(report["removed"]) == report["removed_units"]
    assert all(r["proof"] for r in report["removed"])


ZOO = [("resnet_9blocks", dict(ngf=8, n_blocks=2), 32), ("unet_256", dict(ngf=4), 256),
       ("mobile_resnet_9blocks", dict(ngf=8), 32), ("sub_mobile_resnet_9blocks", {}, 32),
       ("rrdbnet", dict(nf=8, nb=1, gc=4), 16), ("srresnet", dict(nf=8, nb=2), 16), ("dcgan_g", dict(ngf=8), None),
       ("stargan_g", dict(conv_dim=8, repeat_num=1), 32), ("cartoongan_g", dict(ngf=8), 32),
       ("sngan_g", dict(ngf=16), None)]


@pytest.mark.parametrize("name,kw,size", ZOO, ids=[z[0] for z in ZOO])
def test_exact_on_zoo_models(name, kw, size):
    torch.manual_seed(0)
    spec = gcompiler.models.spec(name)
    try:
        model = gcompiler.models.create(name, **kw)
    except gcompiler.ConfigError:
        model = gcompiler.models.create(name)
    inputs = spec.example_inputs(size=size) if size else spec.example_inputs()
    gm = gcompiler.compile(model.eval(), "insert-masks", *inputs, verify="numeric")
    assert gcompiler.masks(gm), f"{name}: no prunable group got a mask"
    _randomize_norms(gm, 1)
    # Keep one unit per group: a residual branch whose whole width dies feeds a constant into an
    # InstanceNorm, and with cartoongan's eps = 1e-9 the *masked* reference then amplifies float rounding
    # noise 3e4-fold (the pruned net computes the exact 0); that case is covered on generated graphs.
    _kill_random_units(gm, 2, keep_one=True)
    err, bound, before, after, _ = _masked_vs_pruned(gm)
    assert bound < 1.01 * TOL, f"{name}: the masked zoo net is ill-conditioned (bound {bound:.2e})"
    assert err <= TOL, name
    assert after < before, name


class _ConstantIntoInstanceNorms(nn.Module):
    """A stem whose BatchNorm has gamma = 0 (so it outputs beta, a constant) feeding 1x1 convs and
    affine-free InstanceNorms: mathematically the branch is 0, numerically it is normalized rounding noise."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(8, 5, 1, bias=False), nn.InstanceNorm2d(5), nn.ReLU(),
                                    nn.Conv2d(5, 5, 3, padding=1, groups=5, bias=False), nn.InstanceNorm2d(5),
                                    nn.Conv2d(5, 8, 1, bias=False), nn.InstanceNorm2d(8))
        self.up = nn.Sequential(nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False), nn.InstanceNorm2d(4), nn.ReLU(),
                                nn.Conv2d(4, 3, 1))

    def forward(self, x):
        h = self.stem(x)
        return self.up(h + self.branch(h))


@pytest.mark.parametrize("dead_stem", [False, True])
def test_rounding_sensitivity_measures_conditioning(dead_stem):
    """The bound's noise term: ulp-level on a well-conditioned net, far above it when a constant reaches
    affine-free InstanceNorms (the case that made a generated graph miss TOL)."""
    torch.manual_seed(0)
    net = _ConstantIntoInstanceNorms().eval().double()
    _randomize_norms(net, 0)
    if dead_stem:
        with torch.no_grad():
            net.stem[1].weight.zero_()
    x = (torch.randn(1, 3, 13, 11, dtype=torch.float64),)
    sensitivity = _rounding_sensitivity(net, x)
    if dead_stem:
        assert sensitivity > 1e-10
    else:
        assert sensitivity < 1e-13


def test_resnet_9blocks_half_of_every_group_gives_the_analytic_counts():
    ngf, blocks, size = 16, 9, 64
    torch.manual_seed(0)
    model = gcompiler.models.create("resnet_9blocks", ngf=ngf, n_blocks=blocks)  # InstanceNorm, as CycleGAN
    x = torch.randn(1, 3, size, size)
    gm = gcompiler.compile(model.eval(), "insert-masks", x)
    _randomize_norms(gm, 0)
    for mk in gcompiler.masks(gm).values():
        with torch.no_grad():
            mk.uniform_(0.5, 1.5)  # live mask values are folded: the InstanceNorms become affine
            mk[: mk.numel() // 2] = 0
    err, _, _, params, slim = _masked_vs_pruned(gm)
    assert err <= TOL
    # Architecture formula with every width halved: c1 = ngf/2, c2 = ngf, c4 = 2*ngf (trunk and inner).
    # Dead channels after an InstanceNorm mask are exactly 0, so nothing is kept as a carrier; each mask
    # folds into its InstanceNorm, which becomes affine (2 parameters per channel).
    c1, c2, c4 = ngf // 2, ngf, 2 * ngf
    b = model.model[1].bias is not None  # CycleGAN convs carry a bias when the norm is InstanceNorm
    conv = lambda cin, cout, k, bias=b: cin * cout * k * k + (cout if bias else 0)  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    expect_params = (conv(3, c1, 7) + bn(c1) + conv(c1, c2, 3) + bn(c2) + conv(c2, c4, 3)
                     + bn(c4) + blocks * 2 * (conv(c4, c4, 3) + bn(c4))
                     + conv(c4, c2, 3) + bn(c2) + conv(c2, c1, 3) + bn(c1) + conv(c1, 3, 7, True))
    assert params == expect_params
    h = size
    expect_macs = (h * h * c1 * 3 * 49 + (h // 2) ** 2 * c2 * c1 * 9 + (h // 4) ** 2 * c4 * c2 * 9
                   + blocks * 2 * (h // 4) ** 2 * c4 * c4 * 9 + (h // 2) ** 2 * c2 * c4 * 9 + h * h * c1 * c2 * 9
                   + h * h * 3 * c1 * 49)
    assert gcompiler.profile(slim).macs == expect_macs


def test_zero_padding_consumer_is_exact_or_reported():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=1))  # zero padding after a constant channel
    x = torch.randn(1, 3, 12, 12)
    gm = gcompiler.compile(model.eval(), "insert-masks", x)
    _randomize_norms(gm, 0)
    with torch.no_grad():
        gcompiler.masks(gm)["_0"][:4] = 0
    err, _, before, after, slim = _masked_vs_pruned(gm)
    assert err <= TOL
    conv = [m for m in slim.modules() if isinstance(m, nn.Conv2d)][0]
    # the 4 dead channels become fixed maps under zero padding: either removed exactly, or merged onto one
    # kept carrier channel, and then the report says so
    kept = slim.meta["dead_channels"]["groups"]["_0"].get("kept_candidates", {})
    assert conv.out_channels == 4 or (conv.out_channels == 5 and sum(kept.values()) == 1 and
                                      any("carrier" in k for k in kept))


class _Features(nn.Module):
    """A linear feature behind a ReLU that is 0 for typical inputs (large negative bias) but not for all."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)
        self.conv1, self.conv2 = nn.Conv2d(3, 5, 1), nn.Conv2d(5, 2, 1)

    def forward(self, x, img):
        y = self.fc2(self.act(self.fc1(x)))
        z = self.conv2(torch.relu(self.conv1(img)))  # a 1x1 map
        return y, z


def test_channels_that_random_probes_would_call_dead_are_kept():
    torch.manual_seed(0)
    model = _Features().eval()
    with torch.no_grad():
        model.fc1.bias[0] = -50.0  # relu(fc1(x))[0] == 0 for every x of typical magnitude
        model.conv1.bias[1] = -50.0
    x, img = torch.randn(2, 4), torch.randn(2, 3, 1, 1)
    gm = gcompiler.compile(model, "insert-masks", x, img)
    slim = gcompiler.compile(gm, "eliminate-dead-channels")
    assert slim.fc1.out_features == 6 and slim.conv1.out_channels == 5
    assert slim.meta["dead_channels"]["removed"] == []
    big, big_img = torch.full((1, 4), 30.0), torch.full((1, 3, 1, 1), 30.0)  # the feature is alive here
    with torch.no_grad():
        model.fc1.weight[0].fill_(1.0)
        model.conv1.weight[1].fill_(1.0)
        slim.fc1.weight[0].fill_(1.0)
        slim.conv1.weight[1].fill_(1.0)
        for a, b in zip(model(big, big_img), slim(big, big_img)):
            assert torch.equal(a, b)


def test_a_filter_of_zeros_before_an_instance_norm_is_removed_with_its_proof():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.InstanceNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 3, 3, padding=1)).eval()
    with torch.no_grad():
        model[0].weight[2] = 0  # channel 2 is its bias everywhere; the InstanceNorm makes it exactly 0
    x = torch.randn(1, 3, 10, 10)
    gm = gcompiler.compile(model, "insert-masks", x)
    err, _, _, _, slim = _masked_vs_pruned(gm)
    assert err <= TOL
    removed = slim.meta["dead_channels"]["removed"]
    assert [r["unit"] for r in removed] == [2]
    proof = removed[0]["proof"]
    assert "weights of output channel 2 exactly 0" in proof and "InstanceNorm2d" in proof and "of a constant" in proof
    assert slim.get_submodule("0").out_channels == 5


def test_proofs_name_the_mask_or_gamma():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.ReflectionPad2d(1), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(1, 3, 10, 10)
    gm = gcompiler.compile(model, "insert-masks", x)
    _randomize_norms(gm, 0)
    with torch.no_grad():
        gcompiler.masks(gm)["_0"][[1, 5]] = 0  # the BatchNorm's gamma is the mask
    err, _, _, _, slim = _masked_vs_pruned(gm)
    assert err <= TOL
    removed = slim.meta["dead_channels"]["removed"]
    assert {r["unit"] for r in removed} == {1, 5}
    assert all("weight[" in r["proof"] and "== 0 -> beta" in r["proof"] for r in removed)


def _realgen_cases():
    try:
        import realgen
    except ImportError:  # pragma: no cover - the real-style generators are another helper's files
        return []
    return [(n, c) for n, c in realgen.CASES.items() if c.prunable]


@pytest.mark.parametrize("name,case", _realgen_cases(), ids=[n for n, _ in _realgen_cases()])
def test_real_style_generators_all_masks_at_one_remove_nothing_and_random_kills_are_exact(name, case):
    g = torch.Generator().manual_seed(0)
    inputs = case.inputs(g)
    model = case.build().eval()
    gm = gcompiler.compile(model, "insert-masks", *inputs, kwargs=case.kwargs) if case.kwargs else \
        gcompiler.compile(model, "insert-masks", *inputs)
    if not gcompiler.masks(gm):
        pytest.skip(f"{name}: no prunable group")
    # every mask at 1: nothing is proven dead, nothing is removed, the output is unchanged
    err, _, _, _, slim = _masked_vs_pruned(copy.deepcopy(gm))
    assert err <= TOL and slim.meta["dead_channels"]["removed"] == [], name
    _randomize_norms(gm, 0)
    _kill_random_units(gm, 1, frac=0.4)
    err, _, _, _, slim = _masked_vs_pruned(gm)
    assert err <= TOL, name
    assert all(r["proof"] for r in slim.meta["dead_channels"]["removed"])
