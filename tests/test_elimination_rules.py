"""The individual rules of eliminate-dead-channels on small hand-built nets, each checked against the masked
network's output (exactness) and against widths / counts worked out by hand; plus the planner's slim
profile (gcompiler.estimate), which must equal the profile of the network the pass builds."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, strategies as st
from strategies import generator_nets

import gcompiler
from gcompiler.deploy.measure import rel_error
from gcompiler.passes.dead_channels import plan_elimination
from gcompiler.passes.masks import ChannelBias, ChannelMask, masks


def _compile(model, x, pipeline="insert-masks"):
    return gcompiler.compile(model.eval(), pipeline, x, verify="numeric")


def _eliminate(gm, x, **opts):
    """Eliminate on ``gm`` (in place); returns the slim net and the relative error vs the masked output."""
    gm.eval()
    with torch.no_grad():
        ref = gm(x)
    opt = ",".join(f"{k}={v}" for k, v in opts.items())
    slim = gcompiler.compile(gm, "eliminate-dead-channels" + (f"{{{opt}}}" if opt else ""), verify="lint")
    with torch.no_grad():
        out = slim(x)
    return slim, rel_error(ref, out)


def _convs(gm):
    return [m for m in gm.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def _set_bn(model, beta=None):
    """Random BN statistics and gamma; beta = the given constant, or random when None."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_() if beta is None else m.bias.fill_(beta)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)


def test_constant_channels_fold_into_the_bias_of_a_reflect_padded_consumer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.ReflectionPad2d(1), nn.Conv2d(8, 4, 3))
    _set_bn(model, 1.0)  # dead channels carry relu(beta) = 1, not 0
    x = torch.randn(2, 3, 10, 10)
    gm = _compile(model, x)
    assert gm.meta["masks"]["groups"]["_0"]["kind"] == "norm"  # the BN gamma is the mask (GS style)
    bias_before = gm.get_submodule("4").bias.detach().clone()
    with torch.no_grad():
        masks(gm)["_0"][[1, 3, 4, 6]] = 0
    slim, err = _eliminate(gm, x)
    assert err <= 1e-5
    first, second = _convs(slim)
    assert (first.out_channels, second.in_channels) == (4, 4)
    # b' = b + sum_k W[:, c, k] * 1 over the four dead channels
    w = model[4].weight.detach()
    assert torch.allclose(second.bias.detach(), bias_before + w[:, [1, 3, 4, 6]].sum(dim=(1, 2, 3)), atol=1e-5)
    d = slim.meta["dead_channels"]["groups"]["_0"]
    assert (d["removed"], d["folded"], d["merged"]) == (4, 4, 0)


def test_zero_padded_consumer_moves_constant_maps_onto_one_carrier():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    _set_bn(model, 0.7)
    x = torch.randn(1, 3, 9, 9)
    gm = _compile(model, x)
    with torch.no_grad():
        masks(gm)["_0"][:5] = 0
    slim, err = _eliminate(gm, x)
    assert err <= 1e-5
    first, second = _convs(slim)
    # five constant channels under zero padding: four merged onto the fifth (the carrier), which stays
    assert (first.out_channels, second.in_channels) == (4, 4)  # 3 live + 1 carrier
    d = slim.meta["dead_channels"]["groups"]["_0"]
    assert d["removed"] == 4 and d["merged"] == 4 and d["carrier"] is not None
    assert d["kept_candidates"] == {"carrier of merged fixed maps": 1}


def test_zero_constants_need_no_carrier_even_under_zero_padding():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    _set_bn(model, -1.0)  # relu(beta) = 0: the dead channels are exactly zero
    x = torch.randn(1, 3, 9, 9)
    gm = _compile(model, x)
    with torch.no_grad():
        masks(gm)["_0"][:5] = 0
    slim, err = _eliminate(gm, x)
    assert err <= 1e-5
    assert _convs(slim)[1].in_channels == 3


def test_round_to_keeps_multiples_of_the_block():
    torch.manual_seed(3)
    model = gcompiler.models.create("resnet_9blocks", ngf=8, n_blocks=2)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    gm = _compile(model, x, "insert-masks{round_to=4}")
    widths = {n: m.numel() for n, m in masks(gm).items()}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in masks(gm).values():
            m[torch.rand(m.shape, generator=g) < 0.6] = 0
    plan = plan_elimination(gm)
    assert plan.round_to == 4
    slim, err = _eliminate(gm, x)
    assert err <= 1e-5
    for name, d in slim.meta["dead_channels"]["groups"].items():
        kept = d["kept_units"]
        assert kept % 4 == 0 or kept == widths[name], (name, kept)
    # an explicit option wins over the recorded value
    assert plan_elimination(gcompiler.compile(model.eval(), "insert-masks", x), round_to=2).round_to == 2


def test_residual_branch_of_width_zero_becomes_identity_or_channel_bias():
    for norm, becomes in (("instance", "identity"), ("batch", "channel bias")):
        torch.manual_seed(4)
        model = gcompiler.models.create("resnet_9blocks", ngf=8, n_blocks=2, norm=norm)
        _set_bn(model)
        x = torch.rand(1, 3, 32, 32) * 2 - 1
        gm = _compile(model, x)
        n_adds = sum(n.op == "call_function" and "add" in str(n.target) for n in gm.graph.nodes)
        inner = [n for n in masks(gm) if "conv_block" in n][0]
        with torch.no_grad():
            masks(gm)[inner].zero_()
        slim, err = _eliminate(gm, x)
        assert err <= 1e-5, norm
        assert [c["becomes"] for c in slim.meta["dead_channels"]["collapsed_branches"]] == [becomes]
        adds = sum(n.op == "call_function" and "add" in str(n.target) for n in slim.graph.nodes)
        biases = [m for m in slim.modules() if isinstance(m, ChannelBias)]
        assert adds == n_adds - 1 and len(biases) == (becomes == "channel bias")
        # the block's two 3x3 convs are gone: 2 blocks x 2 convs -> 2 remain in the trunk
        assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1)
                   for m in slim.modules()) == 2


def test_grouped_consumer_loses_the_same_number_of_channels_per_group():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 6, 3, padding=1, groups=2, padding_mode="reflect"))
    _set_bn(model, 0.5)
    x = torch.randn(1, 3, 8, 8)
    gm = _compile(model, x)
    with torch.no_grad():
        masks(gm)["_0"][[0, 1, 2, 4]] = 0  # three dead in conv group 0, one in group 1
    slim, err = _eliminate(gm, x)
    assert err <= 1e-5
    first, second = _convs(slim)
    assert (first.out_channels, second.in_channels, second.groups) == (6, 6, 2)
    assert second.weight.shape == (6, 3, 3, 3)


def test_pixel_shuffle_prunes_whole_blocks():
    torch.manual_seed(6)

    class SR(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.Conv2d(3, 16, 3, padding=1)
            self.head = nn.Conv2d(4, 3, 3, padding=1, padding_mode="replicate")

        def forward(self, x):
            return self.head(F.relu(F.pixel_shuffle(self.up(x), 2)))

    x = torch.randn(1, 3, 6, 6)
    gm = _compile(SR(), x)
    mk = masks(gm)["up"]
    assert mk.numel() == 4  # one entry per block of r^2 = 4 producer channels
    with torch.no_grad():
        mk[2] = 0
    slim, err = _eliminate(gm, x)
    assert err <= 1e-5
    assert (slim.up.out_channels, slim.head.in_channels) == (12, 3)


def test_a_filter_of_zeros_is_dead_without_a_mask():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Tanh(), nn.Conv2d(6, 2, 1))
    with torch.no_grad():
        model[0].weight[[2, 5]] = 0  # these channels are tanh(bias): constants
    x = torch.randn(1, 3, 5, 5)
    gm = gcompiler.trace(model.eval(), x)
    slim, err = _eliminate(gm, x)
    assert err <= 1e-5
    assert (slim.get_submodule("0").out_channels, slim.get_submodule("2").in_channels) == (4, 4)


def test_a_group_removed_entirely_leaves_the_concat():
    torch.manual_seed(8)

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 5, 3, padding=1)
            self.head = nn.Conv2d(9, 2, 1)

        def forward(self, x):
            return self.head(torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1))

    x = torch.randn(1, 3, 7, 7)
    gm = _compile(Skip(), x)
    with torch.no_grad():
        masks(gm)["a"].zero_()
    slim, err = _eliminate(gm, x)
    assert err <= 1e-5
    assert slim.head.in_channels == 5 and not hasattr(slim, "a")


def test_masks_fold_away_and_depthwise_groups_shrink():
    torch.manual_seed(9)
    model = gcompiler.models.create("mobile_resnet_9blocks", ngf=8, n_blocks=1)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    gm = _compile(model, x)
    with torch.no_grad():
        for m in masks(gm).values():
            m.uniform_(0.5, 1.5)
            m[: m.numel() // 2] = 0
    slim, err = _eliminate(gm, x)
    assert err <= 1e-5
    assert not any(isinstance(m, ChannelMask) for m in slim.modules())
    assert masks(slim) == {}
    dw = [m for m in slim.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw and all(m.groups == m.in_channels == m.out_channels for m in dw)
    assert all(m.in_channels < 32 for m in dw)  # the depthwise convs lost channels with their group


def test_channel_mask_units_index_and_sharing():
    scale = nn.Parameter(torch.tensor([2.0, 0.0]))
    a = ChannelMask(4, scale, units=2, index=[0, 0, 1, -1])
    b = ChannelMask(2, scale)
    x = torch.ones(1, 4, 2, 2)
    assert a(x)[0, :, 0, 0].tolist() == [2.0, 2.0, 0.0, 1.0]
    with torch.no_grad():
        b.channel_scale()[1] = 3.0  # shared: edits show in every sharer
    assert a(x)[0, 2, 0, 0].item() == 3.0
    with pytest.raises(ValueError, match="channels are dim 1"):
        b(x)


# ------------------------------------------------------------------------------------ slim profile

def _kill(gm, seed, frac):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in masks(gm).values():
            m.copy_(torch.rand(m.shape, generator=g) + 0.5)
            m[torch.rand(m.shape, generator=g) < frac] = 0


@given(net=generator_nets(), seed=st.integers(0, 10_000), frac=st.sampled_from([0.3, 0.7, 1.0]),
       round_to=st.sampled_from([1, 2]))
def test_planned_profile_equals_the_profile_of_the_built_network(net, seed, frac, round_to):
    module, x = net
    gm = gcompiler.compile(gcompiler.trace(module, x), "insert-masks", verify="none")
    _kill(gm, seed, frac)
    est = gcompiler.estimate(gm, round_to=round_to)  # the current (random, partly zero) masks
    macs, params = est.macs, est.params
    # exactness is checked in float64 (test_dead_channels); here the price, so no float32 end check
    slim = gcompiler.compile(gm, f"eliminate-dead-channels{{round_to={round_to}}}", verify="shapes", check=False)
    prof = gcompiler.profile(slim)
    assert (macs, params) == (prof.macs, prof.params)


@pytest.mark.parametrize("name,kw,size", [("unet_256", dict(ngf=4), 256), ("srresnet", dict(nf=8, nb=2), 16),
                                          ("rrdbnet", dict(nf=8, nb=1, gc=4), 16)])
def test_planned_profile_on_zoo_models(name, kw, size):
    torch.manual_seed(0)
    model = gcompiler.models.create(name, **kw)
    x = gcompiler.models.spec(name).example_inputs(size=size)[0]
    gm = _compile(model, x)
    _kill(gm, 1, 0.5)
    est = gcompiler.estimate(gm)
    planned = (est.macs, est.params)
    slim, err = _eliminate(gm, x)
    assert err <= 1e-5
    prof = gcompiler.profile(slim)
    assert planned == (prof.macs, prof.params)


def test_insert_masks_group_filter_and_errors():
    model = gcompiler.models.create("resnet_9blocks", ngf=8, n_blocks=2)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    gm = _compile(model, x, "insert-masks{groups=model_1;model_1*_conv_block_1}")
    assert sorted(masks(gm)) == ["model_1", "model_10_conv_block_1", "model_11_conv_block_1"]
    assert all(m.numel() == w for m, w in zip(masks(gm).values(), (8, 32, 32)))
    with pytest.raises(gcompiler.PassError, match="matches no prunable group; prunable groups: model_1"):
        _compile(model, x, "insert-masks{groups=nope}")
    with pytest.raises(gcompiler.PassError, match="round_to"):
        _compile(model, x, "insert-masks{round_to=0}")
