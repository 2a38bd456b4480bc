"""The model zoo: published parameter / MAC counts, tracing, key layouts and the registry's errors.

Expected numbers come from BRIEF section 2 (reference implementations and papers); layer indices and
widths are hand-derived from the documented architectures.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

import gcompiler
from gcompiler import models
from gcompiler.checkpoint import save_checkpoint
from gcompiler.errors import CheckpointError, ConfigError
from gcompiler.models.mobile_resnet import config_widths
from gcompiler.models.vgg import layer_indices


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------------- published numbers
@pytest.mark.parametrize("name,kw,expected", [
    ("resnet_9blocks", {}, 11_378_179),
    ("unet_256", {}, 54_413_955),
    ("mobile_resnet_9blocks", {}, 1_987_075),
    ("rrdbnet", {}, 16_697_987),
    ("dcgan_g", {}, 3_576_704),
    ("dcgan_d", {}, 2_765_568),
    ("patchgan_d", {}, 2_764_737),
])
def test_parameter_counts_match_reference(name, kw, expected):
    assert n_params(models.create(name, **kw)) == expected


@pytest.mark.parametrize("config,params_m,gmacs", [
    ("16_16_32_16_32_32_16_16", 0.357, 2.55),
    ("16_16_24_16_32_64_16_24", 0.355, 2.64),
])
def test_gan_compression_subnets_match_paper(config, params_m, gmacs):
    m = models.create("sub_mobile_resnet_9blocks", config=config)
    assert n_params(m) / 1e6 == pytest.approx(params_m, rel=0.02)
    (x,) = models.spec("sub_mobile_resnet_9blocks").example_inputs()
    assert gcompiler.profile(m, x).macs / 1e9 == pytest.approx(gmacs, rel=0.02)


@pytest.mark.parametrize("name,gmacs", [
    ("resnet_9blocks", 56.80),        # 256x256, transposed convs at output resolution
    ("rrdbnet", 73.43),               # 64x64 low-resolution input, x4
    ("mobile_resnet_9blocks", 18.3),  # BRIEF's own count
])
def test_macs_match_reference(name, gmacs):
    m = models.create(name)
    inputs = models.spec(name).example_inputs()
    assert gcompiler.profile(m, *inputs).macs / 1e9 == pytest.approx(gmacs, rel=0.005)


def test_resnet_macs_scale_with_size_override():
    m = models.create("resnet_9blocks")
    (x,) = models.spec("resnet_9blocks").example_inputs(size=128)
    assert x.shape == (1, 3, 128, 128)
    # every layer's output is 4x smaller at half the side
    assert gcompiler.profile(m, x).macs * 4 / 1e9 == pytest.approx(56.80, rel=0.005)


# ----------------------------------------------------------------------------------- tracing
# Small widths / inputs so every forward is cheap; architecture (and so the graph) is unchanged.
SMALL = {
    "resnet_9blocks": ({"ngf": 8}, 32),
    "resnet_6blocks": ({"ngf": 8, "dropout": True, "norm": "batch"}, 32),
    "unet_256": ({"ngf": 4}, None),
    "unet_128": ({"ngf": 4}, None),
    "mobile_resnet_9blocks": ({"ngf": 8}, 32),
    "sub_mobile_resnet_9blocks": ({"config": "4_4_8_4_8_8_4_4"}, 32),
    "rrdbnet": ({"nf": 8, "nb": 2, "gc": 4}, 12),
    "srresnet": ({"nf": 8, "nb": 2}, 12),
    "dcgan_g": ({"ngf": 8}, None),
    "dcgan_d": ({"ndf": 8}, None),
    "sngan_g": ({"ngf": 16}, None),
    "stargan_g": ({"conv_dim": 8, "repeat_num": 2}, 32),
    "cartoongan_g": ({"ngf": 8}, 32),
    "patchgan_d": ({"ndf": 8}, 64),
    "vgg16_features": ({}, 32),
    "vgg19_features": ({"layers": ["relu1_2", "conv5_4"]}, 32),
}


def test_every_registered_model_has_a_small_config():
    assert sorted(SMALL) == models.available()


def _flat(out):
    if isinstance(out, dict):
        return [out[k] for k in sorted(out)]
    return [out]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_zoo_model_traces_with_nn_leaves_and_graph_equals_eager(name):
    kw, size = SMALL[name]
    m = models.create(name, **kw).eval()
    inputs = models.spec(name).example_inputs(batch=2, size=size, **kw)
    gm = gcompiler.trace(m, *inputs)
    called = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    convs = {k for k, mod in m.named_modules()
             if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.modules.batchnorm._NormBase,
                                 nn.PixelShuffle, nn.Upsample, nn.ReflectionPad2d))}
    assert convs and convs <= called, f"not call_module leaves: {sorted(convs - called)[:5]}"
    fns = {getattr(n.target, "__name__", "") for n in gm.graph.nodes if n.op == "call_function"}
    assert not fns & {"conv2d", "conv_transpose2d", "instance_norm", "batch_norm", "relu", "pad"}
    with torch.no_grad():
        eager, traced = _flat(m(*inputs)), _flat(gm(*inputs))
    assert len(eager) == len(traced)
    for a, b in zip(eager, traced):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("name,kw,size,out_shape", [
    ("resnet_9blocks", {"ngf": 8}, 32, (1, 3, 32, 32)),
    ("unet_128", {"ngf": 4, "output_nc": 2}, None, (1, 2, 128, 128)),
    ("rrdbnet", {"nf": 8, "nb": 1, "gc": 4}, 8, (1, 3, 32, 32)),
    ("rrdbnet", {"nf": 8, "nb": 1, "gc": 4, "scale": 2}, 8, (1, 3, 16, 16)),
    ("rrdbnet", {"nf": 8, "nb": 1, "gc": 4, "scale": 1, "in_nc": 1, "out_nc": 1}, 8, (1, 1, 8, 8)),
    ("srresnet", {"nf": 8, "nb": 1}, 8, (1, 3, 32, 32)),
    ("srresnet", {"nf": 8, "nb": 1, "scale": 2}, 8, (1, 3, 16, 16)),
    ("dcgan_g", {"ngf": 8}, None, (1, 3, 64, 64)),
    ("dcgan_d", {"ndf": 8}, None, (1, 1, 1, 1)),
    ("sngan_g", {"ngf": 16}, None, (1, 3, 32, 32)),
    ("stargan_g", {"conv_dim": 8, "repeat_num": 1}, 16, (1, 3, 16, 16)),
    ("patchgan_d", {"ndf": 8}, 256, (1, 1, 30, 30)),  # 70x70 PatchGAN: 30x30 score map at 256
    ("cartoongan_g", {"ngf": 8}, 16, (1, 3, 16, 16)),
])
def test_output_shapes(name, kw, size, out_shape):
    m = models.create(name, **kw).eval()
    with torch.no_grad():
        y = m(*models.spec(name).example_inputs(size=size, **kw))
    assert y.shape == out_shape


# ----------------------------------------------------------------------------------- architecture facts
def test_resnet_key_layout_and_dropout_shift():
    keys = set(models.create("resnet_9blocks", ngf=4).state_dict())
    for k in ("model.1.weight", "model.4.weight", "model.7.weight", "model.10.conv_block.1.weight",
              "model.18.conv_block.5.bias", "model.19.weight", "model.22.weight", "model.26.bias"):
        assert k in keys
    assert not any(".running_" in k for k in keys)  # InstanceNorm without affine or running stats
    drop = set(models.create("resnet_9blocks", ngf=4, dropout=True).state_dict())
    assert "model.10.conv_block.6.weight" in drop and "model.10.conv_block.5.weight" not in drop
    bn = set(models.create("resnet_9blocks", ngf=4, norm="batch").state_dict())
    assert "model.10.conv_block.2.running_mean" in bn and "model.1.bias" not in bn


def test_mobile_resnet_separable_blocks_and_keys():
    m = models.create("mobile_resnet_9blocks", ngf=8)
    sd = m.state_dict()
    dw = sd["model.10.conv_block.1.conv.0.weight"]
    pw = sd["model.10.conv_block.6.conv.2.weight"]
    assert dw.shape == (32, 1, 3, 3) and pw.shape == (32, 32, 1, 1)
    assert m.model[10].conv_block[1].conv[0].groups == 32
    assert isinstance(m.model[10].conv_block[4], nn.Dropout)  # always present in GAN Compression's layout


def test_sub_mobile_config_maps_to_widths():
    # c0..c7 = 16 16 24 16 32 64 16 24: stem c0, down 2c1, trunk 4c2, hidden 4c3|4c4|4c5, up 2c6, c7
    w = config_widths("16_16_24_16_32_64_16_24")
    assert w == dict(stem=16, down1=32, trunk=96, hidden=[64] * 3 + [128] * 3 + [256] * 3, up1=32, up2=24)
    m = models.create("sub_mobile_resnet_9blocks", config="16_16_24_16_32_64_16_24")
    sd = m.state_dict()
    assert sd["model.1.weight"].shape == (16, 3, 7, 7)
    assert sd["model.4.weight"].shape == (32, 16, 3, 3)
    assert sd["model.7.weight"].shape == (96, 32, 3, 3)
    assert sd["model.10.conv_block.1.conv.2.weight"].shape == (64, 96, 1, 1)
    assert sd["model.16.conv_block.6.conv.0.weight"].shape == (256, 1, 3, 3)
    assert sd["model.19.weight"].shape == (96, 32, 3, 3)   # ConvTranspose2d: [in, out, k, k]
    assert sd["model.22.weight"].shape == (32, 24, 3, 3)
    assert sd["model.26.weight"].shape == (3, 24, 7, 7)


def _sub_mobile_cost(c: list[int], side: int = 256) -> tuple[int, int]:
    """Params and MACs of a GAN Compression sub-network, by hand from the documented layer widths."""
    stem, d1, t, u1, u2 = c[0], 2 * c[1], 4 * c[2], 2 * c[6], c[7]
    hidden = [4 * c[3]] * 3 + [4 * c[4]] * 3 + [4 * c[5]] * 3
    q = side // 4  # trunk resolution
    params = (3 * 49 + 1) * stem + (stem * 9 + 1) * d1 + (d1 * 9 + 1) * t + (t * 9 + 1) * u1 + (u1 * 9 + 1) * u2
    params += (u2 * 49 + 1) * 3
    macs = side**2 * stem * 3 * 49 + (side // 2) ** 2 * d1 * stem * 9 + q**2 * t * d1 * 9
    macs += (side // 2) ** 2 * u1 * t * 9 + side**2 * u2 * u1 * 9 + side**2 * 3 * u2 * 49
    for h in hidden:  # depthwise 3x3 + pointwise 1x1, twice, all with bias
        params += (9 + 1) * t + (t + 1) * h + (9 + 1) * h + (h + 1) * t
        macs += q**2 * (t * 9 + h * t + h * 9 + t * h)
    return params, macs


@settings(deadline=None)
@given(st.lists(st.sampled_from([16, 24, 32, 48, 64]), min_size=8, max_size=8))
def test_sub_mobile_cost_follows_config(c):
    m = models.create("sub_mobile_resnet_9blocks", config="_".join(map(str, c)))
    params, macs = _sub_mobile_cost(c)
    assert n_params(m) == params
    assert gcompiler.profile(m, torch.zeros(1, 3, 256, 256)).macs == macs


@pytest.mark.parametrize("bad", ["16_16_32", "16_16_32_16_32_32_16_x", "0_16_32_16_32_32_16_16", "",
                                 16_16_32_16_32_32_16_16])
def test_sub_mobile_bad_config(bad):
    with pytest.raises(ConfigError, match="config"):
        models.create("sub_mobile_resnet_9blocks", config=bad)


def test_unet_skip_carries_leaky_relu_of_block_input():
    # pytorch-CycleGAN-and-pix2pix applies the down LeakyReLU in place, so the skip half of every inner
    # block's output is LeakyReLU(x), not x; pretrained pix2pix weights expect that.
    m = models.create("unet_128", ngf=2).eval()
    inner = m.model.model[1]
    x = torch.randn(1, 2, 64, 64)  # six more stride-2 levels below this one
    with torch.no_grad():
        y = inner(x)
    assert y.shape == (1, 4, 64, 64)
    torch.testing.assert_close(y[:, :2], F.leaky_relu(x, 0.2))


def test_unet_nested_key_layout():
    keys = set(models.create("unet_256", ngf=2).state_dict())
    assert "model.model.0.weight" in keys and "model.model.3.bias" in keys
    assert "model.model.1.model.1.weight" in keys and "model.model.1.model.2.running_var" in keys
    assert "model.model.1.model.3.model.3.model.5.weight" in keys


def test_stargan_label_is_broadcast_and_concatenated():
    m = models.create("stargan_g", conv_dim=4, repeat_num=1).eval()
    x, c = models.spec("stargan_g").example_inputs(batch=3, size=16)
    assert c.shape == (3, 5) and torch.equal(c.sum(1), torch.ones(3)) and c[1, 1] == 1
    assert m.main[0].in_channels == 3 + 5
    seen = {}
    h = m.main[0].register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))
    with torch.no_grad():
        m(x, c)
    h.remove()
    torch.testing.assert_close(seen["x"][:, :3], x)
    torch.testing.assert_close(seen["x"][:, 3:], c[:, :, None, None].expand(-1, -1, 16, 16))


def test_cartoongan_instance_norm_matches_reference_formula():
    # Reference norm: (x - mean) / sqrt(biased var + 1e-9) * scale + shift, per sample and channel.
    m = models.create("cartoongan_g", ngf=4)
    norm = m.in01_1
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    norm = norm.double()
    mean = x.mean((2, 3), keepdim=True)
    var = x.var((2, 3), unbiased=False, keepdim=True)
    ref = (x - mean) / torch.sqrt(var + 1e-9) * norm.weight[None, :, None, None] + norm.bias[None, :, None, None]
    torch.testing.assert_close(norm(x), ref)


def test_vgg_layer_indices_follow_torchvision():
    i16, i19 = layer_indices("vgg16"), layer_indices("vgg19")
    assert (i16["relu1_2"], i16["relu2_2"], i16["relu3_3"], i16["relu4_3"], i16["relu5_3"]) == (3, 8, 15, 22, 29)
    assert (i19["relu3_4"], i19["relu4_4"], i19["conv5_4"], i19["relu5_4"]) == (17, 26, 34, 35)


def test_vgg_returns_named_features_and_truncates():
    m = models.create("vgg16_features", layers=["relu1_2", "relu2_2", "relu3_3", "relu4_3"]).eval()
    assert len(m.features) == 23  # nothing after relu4_3 is built
    with torch.no_grad():
        out = m(torch.rand(1, 3, 32, 32))
    assert list(out) == ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
    assert [v.shape[1] for v in out.values()] == [64, 128, 256, 512]
    assert [v.shape[-1] for v in out.values()] == [32, 16, 8, 4]
    assert all((v >= 0).all() for v in out.values())


def test_vgg_pretrained_without_file_says_what_to_download():
    with pytest.raises(CheckpointError, match=r"vgg16-397923af\.pth.*features\.N\.weight"):
        models.create("vgg16_features", pretrained=True)
    with pytest.raises(CheckpointError, match=r"vgg19-dcbb9e9d\.pth"):
        models.create("vgg19_features", pretrained=True)


def test_vgg_unknown_layer():
    with pytest.raises(ConfigError, match="relu9_9"):
        models.create("vgg16_features", layers=["relu9_9"])


# ----------------------------------------------------------------------------------- registry
def test_registry_specs():
    assert models.spec("resnet_9blocks").kind == "generator"
    assert models.spec("patchgan_d").kind == "discriminator"
    assert models.spec("vgg19_features").kind == "features"
    assert models.spec("mobile_resnet_9blocks").family == models.spec("sub_mobile_resnet_9blocks").family
    assert set(models.available(kind="discriminator")) == {"dcgan_d", "patchgan_d"}
    assert {"resnet_9blocks", "unet_256", "rrdbnet", "stargan_g", "vgg16_features"} <= set(models.available())


@pytest.mark.parametrize("name,shapes", [
    ("resnet_9blocks", [(1, 3, 256, 256)]),
    ("unet_256", [(1, 3, 256, 256)]),
    ("rrdbnet", [(1, 3, 64, 64)]),
    ("dcgan_g", [(1, 100, 1, 1)]),
    ("sngan_g", [(1, 128)]),
    ("stargan_g", [(1, 3, 128, 128), (1, 5)]),
])
def test_example_inputs_reference_shapes(name, shapes):
    assert [tuple(t.shape) for t in models.spec(name).example_inputs()] == shapes


def test_example_inputs_options():
    s = models.spec("stargan_g")
    x, c = s.example_inputs(batch=2, size=(32, 48), c_dim=7)
    assert x.shape == (2, 3, 32, 48) and c.shape == (2, 7)
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(s.example_inputs(seed=3)[0], s.example_inputs(seed=3)[0])
    assert models.spec("rrdbnet").example_inputs(in_nc=1)[0].shape == (1, 1, 64, 64)
    assert models.spec("dcgan_g").example_inputs(nz=16)[0].shape == (1, 16, 1, 1)
    assert not models.spec("dcgan_g").has_spatial_input and models.spec("rrdbnet").has_spatial_input
    with pytest.raises(ConfigError, match="no image input"):
        models.spec("dcgan_g").example_inputs(size=128)
    with pytest.raises(ConfigError, match="size"):
        models.spec("rrdbnet").example_inputs(size=0)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ConfigError, match=r"resnet_9block'.*Did you mean 'resnet_9blocks'.*Available models"):
        models.create("resnet_9block")
    with pytest.raises(ConfigError, match="unknown model"):
        models.spec("no_such_model")


def test_bad_option_names_model_and_option():
    with pytest.raises(ConfigError, match=r"'resnet_9blocks' has no option 'ngff'.*Did you mean 'ngf'"):
        models.create("resnet_9blocks", ngff=32)
    with pytest.raises(ConfigError, match=r"'rrdbnet'.*scale=3"):
        models.create("rrdbnet", scale=3)
    with pytest.raises(ConfigError, match=r"norm='group'"):
        models.create("resnet_9blocks", norm="group")
    with pytest.raises(ConfigError, match=r"nf must be a positive int"):
        models.create("rrdbnet", nf=0)
    with pytest.raises(ConfigError, match="has no option 'ngf'"):
        models.spec("rrdbnet").example_inputs(ngf=3)


def test_create_with_weights_loads_checkpoint(tmp_path):
    src = models.create("dcgan_d", ndf=4)
    path = save_checkpoint(src, tmp_path / "d.safetensors")
    dst = models.create("dcgan_d", ndf=4, weights=path)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k
