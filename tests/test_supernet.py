"""make-supernet and gcompiler.supernet: exactness at full width, extract == set_config, cost, codec, checkpoints."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gcompiler
from gcompiler import models
from gcompiler.checkpoint import load_checkpoint
from gcompiler.errors import ConfigError, PassError
from gcompiler.supernet import (config_to_widths, decode_config, encode_config, extract, make_supernet,
                                resnet_slots, search_space, set_config, subnet_cost, widths_to_config)
from strategies import examples, generator_nets


def _random_widths(sn, rng: random.Random) -> dict[str, int]:
    return {g: rng.randint(1, n) for g, n in sn.meta["supernet"]["groups"].items()}


def _check_supernet(model: nn.Module, x: torch.Tensor, seed: int, trials: int = 2) -> None:
    """Full width == input exactly; random configs: the extracted net == the supernet, cost == profile."""
    gm = gcompiler.trace(model, x)
    with torch.no_grad():
        ref = gm(x)
    sn = make_supernet(gm)
    assert "supernet" not in gm.meta  # compile leaves its argument untouched
    with torch.no_grad():
        assert torch.equal(sn(x), ref)
    rng = random.Random(seed)
    for _ in range(trials):
        widths = _random_widths(sn, rng)
        set_config(sn, widths)
        with torch.no_grad():
            y = sn(x)
            sub = extract(sn, widths)
            assert not any(isinstance(m, gcompiler.passes.supernet.SuperModule) for m in sub.modules())
            assert torch.equal(sub(x), y)
        prof = gcompiler.profile(sub, x)
        cost = subnet_cost(sn, widths)
        assert (cost["macs"], cost["params"]) == (prof.macs, prof.params)
        assert sn.meta["supernet"]["config"] == {**sn.meta["supernet"]["groups"], **widths}  # extract restored it
    set_config(sn, {})
    with torch.no_grad():
        assert torch.equal(sn(x), ref)


@settings(deadline=None)
@given(net=generator_nets(allow_unknown=True), seed=st.integers(0, 10_000))
def test_supernet_property_on_generated_graphs(net, seed):
    model, x = net
    _check_supernet(model, x, seed, trials=1)


@pytest.mark.parametrize("name,kw,size", [
    ("resnet_9blocks", dict(ngf=4, n_blocks=3), 32),
    ("mobile_resnet_9blocks", dict(ngf=4, n_blocks=3), 32),
    ("unet_128", dict(ngf=2), 128),
    ("srresnet", dict(nf=8, nb=2, scale=4), 12),
    ("rrdbnet", dict(nf=8, nb=1, gc=4), 12),
])
def test_supernet_property_on_zoo_models(name, kw, size):
    torch.manual_seed(0)
    model = models.create(name, **kw).eval()
    for m in model.modules():  # non-trivial norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    _check_supernet(model, torch.randn(1, 3, size, size), seed=1, trials=3)


def test_supernet_through_compile_is_verified_exact():
    m = models.create("resnet_9blocks", ngf=4, n_blocks=3)
    gm = gcompiler.compile(m, "make-supernet", torch.randn(1, 3, 32, 32), verify="numeric")
    (rec,) = gm.meta["pass_log"].records
    assert rec.name == "make-supernet" and rec.error == 0.0
    with pytest.raises(PassError, match="already a supernet"):
        gcompiler.run_pipeline(gm, "make-supernet")


def test_grouped_conv_and_masks_fix_their_groups():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.b = nn.Conv2d(8, 6, 3, padding=1)
            self.c = nn.Conv2d(6, 3, 1)

        def forward(self, x):
            return self.c(torch.relu(self.b(torch.relu(self.g(self.a(x))))))

    x = torch.randn(1, 3, 8, 8)
    sn = make_supernet(Net(), x)
    meta = sn.meta["supernet"]
    assert set(meta["groups"]) == {"b"}
    assert "grouped conv" in meta["fixed"]["a"] and "grouped conv" in meta["fixed"]["g"]
    with pytest.raises(ConfigError, match="fixed width"):
        set_config(sn, {"a": 4})
    set_config(sn, {"b": 2})
    assert torch.equal(extract(sn)(x), sn(x))


def test_config_errors():
    sn = make_supernet(models.create("srresnet", nf=8, nb=1, scale=2), torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="no group 'nope'"):
        set_config(sn, {"nope": 2})
    with pytest.raises(ConfigError, match=r"not an integer in \[1, 8\]"):
        set_config(sn, {"conv_first": 0})
    with pytest.raises(ConfigError, match="width dict"):
        set_config(sn, "16_16_32_16_32_32_16_16")
    with pytest.raises(ConfigError, match="not a supernet"):
        set_config(gcompiler.trace(models.create("srresnet", nf=8, nb=1, scale=2), torch.randn(1, 3, 8, 8)), {})


@given(st.lists(st.integers(1, 999), min_size=8, max_size=8))
def test_config_string_codec_round_trips(values):
    text = encode_config(values)
    assert decode_config(text) == values
    assert encode_config(decode_config(text)) == text


@pytest.fixture(scope="module")
def mobile_supernet():
    m = models.create("mobile_resnet_9blocks", ngf=8).eval()
    return make_supernet(m, torch.randn(1, 3, 32, 32))


@settings(deadline=None, max_examples=examples(6))
@given(st.lists(st.sampled_from([2, 4, 6, 8]), min_size=8, max_size=8))
def test_resnet_config_maps_to_the_layer_widths(mobile_supernet, c):
    from gcompiler.models.mobile_resnet import config_widths

    sn = mobile_supernet
    text = encode_config(c)
    widths = config_to_widths(sn, text)
    assert widths_to_config(sn, widths) == text
    slots = resnet_slots(sn)
    want = config_widths(text)
    assert [widths[slots.stem], widths[slots.down1], widths[slots.trunk], widths[slots.up1], widths[slots.up2]] == \
        [want["stem"], want["down1"], want["trunk"], want["up1"], want["up2"]]
    assert [widths[g] for g in slots.hidden] == want["hidden"]
    # the extracted network has the zoo sub-network's parameter count and MACs
    sub = extract(sn, text)
    ref = models.create("sub_mobile_resnet_9blocks", config=text)
    x = torch.randn(1, 3, 32, 32)
    p_sub, p_ref = gcompiler.profile(sub, x), gcompiler.profile(ref, x)
    assert (p_sub.params, p_sub.macs) == (p_ref.params, p_ref.macs)
    assert sub.meta["subnet_config"] == text


def test_resnet_config_errors(mobile_supernet):
    with pytest.raises(ConfigError, match="at most 8"):
        set_config(mobile_supernet, "16_16_32_16_32_32_16_16")
    with pytest.raises(ConfigError, match="config"):
        set_config(mobile_supernet, "4_4_4")


def test_published_sub_network_counts():
    # README of mit-han-lab/gan-compression: 16_16_32_16_32_32_16_16 -> 0.357M params,
    # 16_16_24_16_32_64_16_24 -> 0.355M (BRIEF section 2)
    sn = make_supernet(models.create("mobile_resnet_9blocks"), torch.randn(1, 3, 32, 32))  # params: any size
    assert round(subnet_cost(sn, "16_16_32_16_32_32_16_16")["params"] / 1e6, 3) == 0.357
    assert round(subnet_cost(sn, "16_16_24_16_32_64_16_24")["params"] / 1e6, 3) == 0.355
    space = search_space(sn)
    assert space.kind == "resnet" and space.choices[0] == [64, 48, 32, 24, 16] and space.size == 5 ** 8


def _reference_layout(w: dict, *, dropout_slot: bool = True) -> dict[str, tuple[int, ...]]:
    """GAN Compression's (Sub)MobileResnetGenerator state-dict keys and shapes, from the research notes."""
    shapes = {"model.1": (w["stem"], 3, 7, 7), "model.4": (w["down1"], w["stem"], 3, 3),
              "model.7": (w["trunk"], w["down1"], 3, 3), "model.19": (w["trunk"], w["up1"], 3, 3),
              "model.22": (w["up1"], w["up2"], 3, 3), "model.26": (3, w["up2"], 7, 7)}
    out = {}
    for k, s in shapes.items():
        out[f"{k}.weight"], out[f"{k}.bias"] = s, (s[1] if k in ("model.19", "model.22") else s[0],)
    t = w["trunk"]
    for i, h in enumerate(w["hidden"]):
        b = f"model.{10 + i}.conv_block"
        for conv, (cin, cout) in (("1", (t, h)), ("6", (h, t))):
            out[f"{b}.{conv}.conv.0.weight"], out[f"{b}.{conv}.conv.0.bias"] = (cin, 1, 3, 3), (cin,)
            out[f"{b}.{conv}.conv.2.weight"], out[f"{b}.{conv}.conv.2.bias"] = (cout, cin, 1, 1), (cout,)
    return out


def test_public_sub_mobile_checkpoint_matches_the_supernet_sub_network(tmp_path):
    """A supernet checkpoint in GAN Compression's layout, exported the way their export.py does (first-k slices
    of every conv, matched by name) for a config string, loads into the zoo's sub_mobile model and computes what
    our supernet extracts for that string."""
    from gcompiler.models.mobile_resnet import config_widths

    ngf = 8
    full = dict(stem=ngf, down1=2 * ngf, trunk=4 * ngf, hidden=[4 * ngf] * 9, up1=2 * ngf, up2=ngf)
    g = torch.Generator().manual_seed(0)
    ckpt = {k: torch.randn(s, generator=g) * 0.3 for k, s in _reference_layout(full).items()}
    torch.save(ckpt, tmp_path / "latest_net_G.pth")
    sup = models.create("mobile_resnet_9blocks", ngf=ngf).eval()
    load_checkpoint(sup, tmp_path / "latest_net_G.pth")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    sn = make_supernet(sup, x)
    config = "4_6_8_2_6_8_4_6"
    sub_layout = _reference_layout(config_widths(config))
    exported = {k: ckpt[k][tuple(slice(0, n) for n in shape)].clone() for k, shape in sub_layout.items()}
    torch.save(exported, tmp_path / "compressed_net_G.pth")
    zoo = models.create("sub_mobile_resnet_9blocks", config=config).eval()
    load_checkpoint(zoo, tmp_path / "compressed_net_G.pth")
    with torch.no_grad():
        set_config(sn, config)
        ours = sn(x)
        torch.testing.assert_close(zoo(x), ours, rtol=1e-5, atol=1e-6)
        assert torch.equal(extract(sn, config)(x), ours)
    # and the extracted sub-network's weights are exactly the exported slices, under the same keys
    sd = extract(sn, config).state_dict()
    for k, v in exported.items():
        assert torch.equal(sd[k], v), k


def test_batchnorm_training_updates_only_the_active_channels():
    bn = nn.Sequential(nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6), nn.Conv2d(6, 3, 1))
    sn = make_supernet(bn, torch.randn(2, 3, 4, 4))
    set_config(sn, {"_0": 4})
    before = sn.get_submodule("1").running_mean.clone()
    sn.train()
    sn(torch.randn(4, 3, 4, 4) + 3)
    after = sn.get_submodule("1").running_mean
    assert not torch.equal(after[:4], before[:4]) and torch.equal(after[4:], before[4:])


@settings(deadline=None, max_examples=examples(6))
@given(net=generator_nets(allow_unknown=True), seed=st.integers(0, 10_000))
def test_l1_order_is_a_function_preserving_permutation(net, seed):
    model, x = net
    gm = gcompiler.trace(model, x)
    with torch.no_grad():
        ref = gm(x)
        sn = gcompiler.run_pipeline(gcompiler.trace(model, x), "make-supernet{order=l1}", verify="none")[0]
        y = sn(x)
    assert (y - ref).abs().max() <= 1e-5 * max(float(ref.abs().max()), 1e-12) + 1e-6
    widths = _random_widths(sn, random.Random(seed))
    set_config(sn, widths)
    with torch.no_grad():
        assert torch.equal(extract(sn)(x), sn(x))


def test_l1_order_puts_the_strongest_filters_first():
    torch.manual_seed(0)
    m = models.create("resnet_9blocks", ngf=4, n_blocks=3).eval()
    x = torch.randn(1, 3, 32, 32)
    sn = gcompiler.compile(m, "make-supernet{order=l1}", x)
    w_stem = sn.get_submodule("model.1").weight.detach().abs().flatten(1).sum(1)
    assert torch.equal(w_stem, w_stem.sort(descending=True).values)
    trunk = sum(sn.get_submodule(t).weight.detach().abs().flatten(1).sum(1)
                for t in ("model.7", "model.10.conv_block.5", "model.11.conv_block.5", "model.12.conv_block.5"))
    assert torch.equal(trunk, trunk.sort(descending=True).values)
    orig = m.model[1].weight.detach().abs().flatten(1).sum(1)
    assert torch.equal(w_stem, orig.sort(descending=True).values)  # the same filters, reordered
    with torch.no_grad():
        torch.testing.assert_close(sn(x), m(x), rtol=1e-5, atol=1e-6)


def _check_cost_model(model: nn.Module, x: torch.Tensor, seed: int, trials: int, exact: bool = True) -> None:
    gm = gcompiler.trace(model, x)
    sn = make_supernet(gm)
    masked = gcompiler.compile(gm, "insert-masks")
    rng = random.Random(seed)
    for _ in range(trials):
        widths = _random_widths(sn, rng)
        est = gcompiler.estimate(masked, widths=widths)
        cost = subnet_cost(sn, widths)
        prof = gcompiler.profile(extract(sn, widths), x)
        assert (cost["macs"], cost["params"]) == (prof.macs, prof.params)
        if exact:
            assert (est.macs, est.params) == (cost["macs"], cost["params"])
        else:  # elimination of zeroed units may keep carriers for constants (norm bias + zero padding)
            assert est.macs >= cost["macs"] and est.params >= cost["params"]


@pytest.mark.parametrize("name,kw,size", [
    ("resnet_9blocks", dict(ngf=4, n_blocks=3), 32),
    ("mobile_resnet_9blocks", dict(ngf=4, n_blocks=3), 32),
    ("unet_128", dict(ngf=2), 128),
    ("srresnet", dict(nf=8, nb=2, scale=4), 12),
])
def test_sub_network_prices_agree_with_the_shared_cost_model(name, kw, size):
    """gcompiler.estimate(widths=...) on the masked plain graph == the supernet's table == the extracted profile
    (zoo models at initialisation: norm biases are 0, so removed units leave no constant behind)."""
    _check_cost_model(models.create(name, **kw).eval(), torch.randn(1, 3, size, size), seed=2, trials=3)


@settings(deadline=None, max_examples=examples(8))
@given(net=generator_nets(allow_unknown=False), seed=st.integers(0, 10_000))
def test_sub_network_prices_agree_with_the_cost_model_on_generated_graphs(net, seed):
    model, x = net
    _check_cost_model(model, x, seed, trials=1, exact=False)


def _realgen_cases():
    from realgen import CASES

    return sorted(CASES)


@pytest.mark.parametrize("name", _realgen_cases())
def test_supernet_on_generators_in_the_style_of_public_code(name):
    """Full width bit-identical; a random configuration: the extracted network equals the supernet."""
    from realgen import CASES

    case = CASES[name]
    inputs = case.inputs(torch.Generator().manual_seed(0))
    gm = gcompiler.trace(case.build().eval(), *inputs, kwargs=case.kwargs)
    with torch.no_grad():
        ref = gm(*inputs)
    sn = make_supernet(gm)
    flat = lambda y: y if isinstance(y, torch.Tensor) else torch.cat([t.flatten() for t in y])  # noqa: E731
    with torch.no_grad():
        assert torch.equal(flat(sn(*inputs)), flat(ref))
        set_config(sn, _random_widths(sn, random.Random(0)))
        assert torch.equal(flat(extract(sn)(*inputs)), flat(sn(*inputs)))
