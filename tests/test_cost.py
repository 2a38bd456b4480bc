"""gcompiler.estimate prices exactly the network eliminate-dead-channels builds: for random mask settings
and width choices on generated graphs and zoo models, its MACs and params equal the profile of the
eliminated copy; the cache follows graph and weight edits; bad settings are clear errors."""
import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given, strategies as st
from strategies import generator_nets

import gcompiler
from gcompiler.errors import PassError
from gcompiler.passes.dead_channels import eliminate_dead_channels


def _randomize_norms(gm, seed):
    g = torch.Generator().manual_seed(seed)
    for m in gm.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))


def _random_setting(gm, seed, frac):
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.rand(m.shape, generator=g) >= frac).float() for n, m in gcompiler.masks(gm).items()}


def _built(gm, setting, round_to=None):
    """Profile of eliminate-dead-channels run on a copy of gm whose masks are zeroed where setting is 0."""
    c = copy.deepcopy(gm)
    with torch.no_grad():
        for n, m in gcompiler.masks(c).items():
            m[setting[n] == 0] = 0
    slim = eliminate_dead_channels(c, round_to=round_to or 0)
    return gcompiler.profile(slim)


@given(net=generator_nets(allow_unknown=True), seed=st.integers(0, 10_000), frac=st.sampled_from([0.3, 0.7, 1.0]),
       round_to=st.sampled_from([1, 2]))
def test_estimate_equals_profile_of_the_eliminated_copy(net, seed, frac, round_to):
    module, x = net
    gm = gcompiler.compile(gcompiler.trace(module, x), "insert-masks", verify="lint")
    _randomize_norms(gm, seed)
    setting = _random_setting(gm, seed, frac)
    est = gcompiler.estimate(gm, masks=setting, round_to=round_to)
    ref = _built(gm, setting, round_to)
    assert (est.macs, est.params) == (ref.macs, ref.params)
    assert est.macs == sum(r.macs for r in est.rows) and est.params == sum(r.params for r in est.rows)
    # the same graph, no setting: the current masks (all alive) price the masked graph as eliminated
    plain = gcompiler.estimate(gm)
    ref0 = gcompiler.profile(eliminate_dead_channels(copy.deepcopy(gm)))
    assert (plain.macs, plain.params) == (ref0.macs, ref0.params)


ZOO = [("resnet_9blocks", dict(ngf=8, n_blocks=2), 32), ("unet_256", dict(ngf=4), 256),
       ("mobile_resnet_9blocks", dict(ngf=8), 32), ("rrdbnet", dict(nf=8, nb=1, gc=4), 16),
       ("srresnet", dict(nf=8, nb=2), 16), ("dcgan_g", dict(ngf=8), None), ("stargan_g", dict(conv_dim=8, repeat_num=1), 32),
       ("cartoongan_g", dict(ngf=8), 32), ("sngan_g", dict(ngf=16), None), ("sub_mobile_resnet_9blocks", {}, 32)]


@pytest.mark.parametrize("name,kw,size", ZOO, ids=[z[0] for z in ZOO])
def test_estimate_on_zoo_models(name, kw, size):
    torch.manual_seed(0)
    spec = gcompiler.models.spec(name)
    try:
        model = gcompiler.models.create(name, **kw)
    except gcompiler.ConfigError:
        model = gcompiler.models.create(name)
    inputs = spec.example_inputs(size=size) if size else spec.example_inputs()
    gm = gcompiler.compile(model.eval(), "insert-masks{round_to=2}", *inputs, verify="lint")
    _randomize_norms(gm, 1)
    for seed, frac in ((0, 0.5), (1, 0.9), (2, 1.0)):
        setting = _random_setting(gm, seed, frac)
        est = gcompiler.estimate(gm, masks=setting)
        ref = _built(gm, setting)
        assert (est.macs, est.params) == (ref.macs, ref.params), (name, seed)
    # widths: keep the first k units of every group
    widths = {n: max(1, m.numel() // 3) for n, m in gcompiler.masks(gm).items()}
    setting = {n: (torch.arange(m.numel()) < widths[n]).float() for n, m in gcompiler.masks(gm).items()}
    est = gcompiler.estimate(gm, widths=widths)
    ref = _built(gm, setting)
    assert (est.macs, est.params) == (ref.macs, ref.params)


def test_resnet_half_width_matches_the_architecture_formula_and_cache_follows_edits():
    ngf, blocks, size = 16, 2, 32
    model = gcompiler.models.create("resnet_9blocks", ngf=ngf, n_blocks=blocks)
    gm = gcompiler.compile(model.eval(), "insert-masks", torch.randn(1, 3, size, size))
    full = gcompiler.profile(gm)
    est = gcompiler.estimate(gm)
    assert (est.macs, est.params) == (full.macs, full.params - sum(m.numel() for m in gcompiler.masks(gm).values()))
    half = gcompiler.estimate(gm, widths={n: m.numel() // 2 for n, m in gcompiler.masks(gm).items()})
    # architecture formula with every width halved (c1 = ngf/2, c2 = ngf, c4 = 2 ngf); masks at 1 vanish
    c1, c2, c4, h = ngf // 2, ngf, 2 * ngf, size
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731 - CycleGAN convs carry a bias with IN
    assert half.params == (conv(3, c1, 7) + conv(c1, c2, 3) + conv(c2, c4, 3) + blocks * 2 * conv(c4, c4, 3)
                           + conv(c4, c2, 3) + conv(c2, c1, 3) + conv(c1, 3, 7))
    assert half.macs == (h * h * c1 * 3 * 49 + (h // 2) ** 2 * c2 * c1 * 9 + (h // 4) ** 2 * c4 * c2 * 9
                         + blocks * 2 * (h // 4) ** 2 * c4 * c4 * 9 + (h // 2) ** 2 * c2 * c4 * 9
                         + h * h * c1 * c2 * 9 + h * h * 3 * c1 * 49)
    # a setting may name the mask module instead of the group; size follows the params
    name, mk = next(iter(gcompiler.masks(gm).items()))
    module = gm.meta["masks"]["groups"][name]["modules"][0]
    setting = (torch.arange(mk.numel()) % 2).float()
    by_group, by_module = gcompiler.estimate(gm, masks={name: setting}), gcompiler.estimate(gm, masks={module: setting})
    assert (by_group.macs, by_group.params) == (by_module.macs, by_module.params) and by_group.macs < full.macs
    assert by_group.size_bytes(8) == by_group.params
    # zeroing a whole producer filter in place (a weight edit) is seen: that unit is dead without a mask
    conv = next(m for m in gm.modules() if isinstance(m, nn.Conv2d) and m.out_channels == ngf)
    before = gcompiler.estimate(gm)
    with torch.no_grad():
        conv.weight[0] = 0
    after = gcompiler.estimate(gm)
    assert after.macs < before.macs


def test_bad_settings_are_clear_errors():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    gm = gcompiler.compile(model.eval(), "insert-masks", torch.randn(1, 3, 8, 8))
    name = next(iter(gcompiler.masks(gm)))
    with pytest.raises(PassError, match="not a masked channel group"):
        gcompiler.estimate(gm, masks={"nope": torch.ones(8)})
    with pytest.raises(PassError, match="has 3 entries"):
        gcompiler.estimate(gm, masks={name: torch.ones(3)})
    with pytest.raises(PassError, match=r"must be an int in \[0, 8\]"):
        gcompiler.estimate(gm, widths={name: 9})


def test_prune_to_budget_fits_exactly_with_text_budgets_and_refuses_the_impossible():
    from gcompiler.passes.budget import prune_to_budget

    torch.manual_seed(0)
    model = gcompiler.models.create("resnet_9blocks", ngf=8, n_blocks=2)
    gm = gcompiler.compile(model.eval(), "insert-masks{round_to=2}", torch.randn(1, 3, 32, 32))
    dense = gcompiler.estimate(gm).macs
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(m.shape, generator=g) for n, m in gcompiler.masks(gm).items()}
    info = prune_to_budget(copy.deepcopy(gm), scores, "4x")  # the one budget parser: dense / 4
    assert info["budget"] == int(dense / 4)
    work = copy.deepcopy(gm)
    info = prune_to_budget(work, scores, dense // 4)
    slim = eliminate_dead_channels(copy.deepcopy(work))
    assert gcompiler.profile(slim).macs == info["macs"] <= dense // 4
    for name, m in gcompiler.masks(work).items():
        alive = m != 0
        assert int(alive.sum()) % 2 == 0 or int(alive.sum()) == m.numel()  # whole round_to blocks
        if (~alive).any() and alive.any():  # the weakest units went first
            assert scores[name][~alive].max() <= scores[name][alive].min()
    with pytest.raises(PassError, match="cannot reach"):
        prune_to_budget(copy.deepcopy(gm), scores, 10)
    with pytest.raises(PassError, match="not a masked group"):
        prune_to_budget(copy.deepcopy(gm), {"nope": torch.ones(3)}, dense // 2)
