"""Checkpoint loading in the reference key layouts, legacy patches, safetensors round trips and errors.

The reference state dicts are generated here from the documented layouts (BRIEF section 2 and the
module docstrings), independently of the zoo's model classes, filled with random tensors and written
the way the reference code writes them (``torch.save`` of a plain dict or a training container).
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from gcompiler import models
from gcompiler.checkpoint import load_checkpoint, read_state_dict, save_checkpoint
from gcompiler.errors import CheckpointError

Shapes = dict[str, tuple[int, ...]]


def randomize(shapes: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = torch.randn(s, generator=g)
    return out


def conv(shapes: Shapes, key: str, cout: int, cin: int, k: int, bias: bool = True) -> None:
    shapes[f"{key}.weight"] = (cout, cin, k, k)
    if bias:
        shapes[f"{key}.bias"] = (cout,)


def norm_stats(shapes: Shapes, key: str, c: int, affine: bool = False) -> None:
    """What BatchNorm always, and InstanceNorm in PyTorch < 0.4 checkpoints, write."""
    if affine:
        shapes[f"{key}.weight"] = shapes[f"{key}.bias"] = (c,)
    shapes[f"{key}.running_mean"] = shapes[f"{key}.running_var"] = (c,)
    shapes[f"{key}.num_batches_tracked"] = ()


def cyclegan_resnet_layout(ngf: int, n_blocks: int, *, dropout: bool = False, norm: str = "instance",
                           old_in_stats: bool = False) -> Shapes:
    """pytorch-CycleGAN-and-pix2pix ResnetGenerator keys (one `model` Sequential)."""
    bias = norm != "batch"
    stats = norm == "batch" or old_in_stats
    s: Shapes = {}
    conv(s, "model.1", ngf, 3, 7, bias)
    conv(s, "model.4", 2 * ngf, ngf, 3, bias)
    conv(s, "model.7", 4 * ngf, 2 * ngf, 3, bias)
    norms = [("model.2", ngf), ("model.5", 2 * ngf), ("model.8", 4 * ngf)]
    second = 6 if dropout else 5
    for b in range(n_blocks):
        p = f"model.{10 + b}.conv_block"
        conv(s, f"{p}.1", 4 * ngf, 4 * ngf, 3, bias)
        conv(s, f"{p}.{second}", 4 * ngf, 4 * ngf, 3, bias)
        norms += [(f"{p}.2", 4 * ngf), (f"{p}.{second + 1}", 4 * ngf)]
    up = 10 + n_blocks
    s[f"model.{up}.weight"] = (4 * ngf, 2 * ngf, 3, 3)  # ConvTranspose2d: [in, out, k, k]
    s[f"model.{up + 3}.weight"] = (2 * ngf, ngf, 3, 3)
    if bias:
        s[f"model.{up}.bias"], s[f"model.{up + 3}.bias"] = (2 * ngf,), (ngf,)
    norms += [(f"model.{up + 1}", 2 * ngf), (f"model.{up + 4}", ngf)]
    conv(s, f"model.{up + 7}", 3, ngf, 7)
    if stats:
        for key, c in norms:
            norm_stats(s, key, c, affine=norm == "batch")
    return s


def esrgan_layout(nf: int, nb: int, gc: int) -> Shapes:
    """xinntao/ESRGAN RRDBNet keys."""
    s: Shapes = {}
    conv(s, "conv_first", nf, 3, 3)
    for i in range(nb):
        for r in (1, 2, 3):
            for j in range(1, 6):
                conv(s, f"RRDB_trunk.{i}.RDB{r}.conv{j}", nf if j == 5 else gc, nf + (j - 1) * gc, 3)
    for name in ("trunk_conv", "upconv1", "upconv2", "HRconv"):
        conv(s, name, nf, nf, 3)
    conv(s, "conv_last", 3, nf, 3)
    return s


def pix2pix_unet_layout(ngf: int, num_downs: int) -> Shapes:
    """pytorch-CycleGAN-and-pix2pix UnetGenerator keys (BatchNorm, dropout: no parameters)."""
    s: Shapes = {}
    # (outer, inner) widths from the outermost level inwards
    levels = [(3, ngf), (ngf, 2 * ngf), (2 * ngf, 4 * ngf), (4 * ngf, 8 * ngf)] + [(8 * ngf, 8 * ngf)] * (num_downs - 4)
    prefix = "model.model"
    for depth, (outer, inner) in enumerate(levels):
        if depth == 0:
            conv(s, f"{prefix}.0", inner, 3, 4, bias=False)
            s[f"{prefix}.3.weight"], s[f"{prefix}.3.bias"] = (2 * inner, outer, 4, 4), (outer,)
            prefix += ".1.model"
        elif depth == len(levels) - 1:
            conv(s, f"{prefix}.1", inner, outer, 4, bias=False)
            s[f"{prefix}.3.weight"] = (inner, outer, 4, 4)
            norm_stats(s, f"{prefix}.4", outer, affine=True)
        else:
            conv(s, f"{prefix}.1", inner, outer, 4, bias=False)
            norm_stats(s, f"{prefix}.2", inner, affine=True)
            s[f"{prefix}.5.weight"] = (2 * inner, outer, 4, 4)
            norm_stats(s, f"{prefix}.6", outer, affine=True)
            prefix += ".3.model"
    return s


def gan_compression_layout(widths: dict) -> Shapes:
    """mit-han-lab/gan-compression (Sub)MobileResnetGenerator keys, InstanceNorm."""
    s: Shapes = {}
    conv(s, "model.1", widths["stem"], 3, 7)
    conv(s, "model.4", widths["down1"], widths["stem"], 3)
    conv(s, "model.7", widths["trunk"], widths["down1"], 3)
    t = widths["trunk"]
    for b, h in enumerate(widths["hidden"]):
        p = f"model.{10 + b}.conv_block"
        for idx, (cin, cout) in ((1, (t, h)), (6, (h, t))):
            s[f"{p}.{idx}.conv.0.weight"], s[f"{p}.{idx}.conv.0.bias"] = (cin, 1, 3, 3), (cin,)
            s[f"{p}.{idx}.conv.2.weight"], s[f"{p}.{idx}.conv.2.bias"] = (cout, cin, 1, 1), (cout,)
    up = 10 + len(widths["hidden"])
    s[f"model.{up}.weight"], s[f"model.{up}.bias"] = (t, widths["up1"], 3, 3), (widths["up1"],)
    s[f"model.{up + 3}.weight"] = (widths["up1"], widths["up2"], 3, 3)
    s[f"model.{up + 3}.bias"] = (widths["up2"],)
    conv(s, f"model.{up + 7}", 3, widths["up2"], 7)
    return s


def assert_loaded(model, ref: dict[str, torch.Tensor], rename=lambda k: k) -> None:
    sd = model.state_dict()
    for k, v in ref.items():
        assert torch.equal(sd[rename(k)], v.to(sd[rename(k)].dtype)), k


# ----------------------------------------------------------------------------------- reference layouts
def test_cyclegan_resnet_checkpoint_loads(tmp_path):
    ref = randomize(cyclegan_resnet_layout(8, 9))
    assert len(ref) == 2 * (3 + 18 + 3)
    torch.save(ref, tmp_path / "latest_net_G_A.pth")
    m = models.create("resnet_9blocks", ngf=8)
    assert load_checkpoint(m, tmp_path / "latest_net_G_A.pth") is m
    assert_loaded(m, ref)


def test_old_cyclegan_checkpoint_with_instance_norm_running_stats(tmp_path):
    ref = randomize(cyclegan_resnet_layout(4, 6, old_in_stats=True))
    assert any(k.endswith("running_mean") for k in ref)
    torch.save(ref, tmp_path / "old.pth")
    m = models.create("resnet_6blocks", ngf=4)
    load_checkpoint(m, tmp_path / "old.pth")
    assert_loaded(m, {k: v for k, v in ref.items() if "running" not in k and "num_batches" not in k})


def test_dropout_checkpoint_into_model_without_dropout_and_back(tmp_path):
    ref = randomize(cyclegan_resnet_layout(4, 3, dropout=True, old_in_stats=True))
    torch.save(ref, tmp_path / "drop.pth")
    m = models.create("resnet_9blocks", ngf=4, n_blocks=3)
    load_checkpoint(m, tmp_path / "drop.pth")
    assert_loaded(m, {k: v for k, v in ref.items() if ".weight" in k or ".bias" in k},
                  rename=lambda k: k.replace("conv_block.6", "conv_block.5"))

    plain = randomize(cyclegan_resnet_layout(4, 3, dropout=False), seed=1)
    torch.save(plain, tmp_path / "plain.pth")
    md = models.create("resnet_9blocks", ngf=4, n_blocks=3, dropout=True)
    load_checkpoint(md, tmp_path / "plain.pth")
    assert_loaded(md, plain, rename=lambda k: k.replace("conv_block.5", "conv_block.6"))


def test_dropout_shift_with_batch_norm_moves_norm_stats_too(tmp_path):
    ref = randomize(cyclegan_resnet_layout(4, 2, dropout=True, norm="batch"))
    torch.save(ref, tmp_path / "bn.pth")
    m = models.create("resnet_9blocks", ngf=4, n_blocks=2, norm="batch")
    load_checkpoint(m, tmp_path / "bn.pth")

    def back(k: str) -> str:
        for old, new in (("conv_block.6", "conv_block.5"), ("conv_block.7", "conv_block.6")):
            if old in k:
                return k.replace(old, new)
        return k
    assert_loaded(m, ref, rename=back)
    # and the model computes with them: eval-mode BN uses the loaded running statistics
    blk = m.model[10].conv_block
    assert torch.equal(blk[6].running_var, ref["model.10.conv_block.7.running_var"])


def test_module_prefix_and_containers(tmp_path):
    ref = randomize(cyclegan_resnet_layout(4, 1))
    m = models.create("resnet_9blocks", ngf=4, n_blocks=1)
    torch.save({f"module.{k}": v for k, v in ref.items()}, tmp_path / "dp.pth")
    assert_loaded(load_checkpoint(m, tmp_path / "dp.pth"), ref)

    other = randomize(cyclegan_resnet_layout(4, 1), seed=5)
    torch.save({"params": other, "params_ema": ref, "iter": 3}, tmp_path / "basicsr.pth")
    assert_loaded(load_checkpoint(models.create("resnet_9blocks", ngf=4, n_blocks=1), tmp_path / "basicsr.pth"), ref)

    torch.save({"epoch": 10, "model": {"state_dict": {f"module.{k}": v for k, v in ref.items()}}},
               tmp_path / "nested.pth")
    assert_loaded(load_checkpoint(models.create("resnet_9blocks", ngf=4, n_blocks=1), tmp_path / "nested.pth"), ref)


def esrgan_reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, nb: int) -> torch.Tensor:
    """ESRGAN's documented computation, written against the raw state dict."""
    def c(name, h):
        return F.conv2d(h, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)

    def lrelu(h):
        return F.leaky_relu(h, 0.2)

    fea = c("conv_first", x)
    h = fea
    for i in range(nb):
        block_in = h
        for r in (1, 2, 3):
            feats = [h]
            for j in range(1, 5):
                feats.append(lrelu(c(f"RRDB_trunk.{i}.RDB{r}.conv{j}", torch.cat(feats, 1))))
            h = c(f"RRDB_trunk.{i}.RDB{r}.conv5", torch.cat(feats, 1)) * 0.2 + h
        h = h * 0.2 + block_in
    fea = fea + c("trunk_conv", h)
    fea = lrelu(c("upconv1", F.interpolate(fea, scale_factor=2, mode="nearest")))
    fea = lrelu(c("upconv2", F.interpolate(fea, scale_factor=2, mode="nearest")))
    return c("conv_last", lrelu(c("HRconv", fea)))


def test_esrgan_checkpoint_loads_and_computes_reference_function(tmp_path):
    ref = {k: v * 0.1 for k, v in randomize(esrgan_layout(8, 2, 4)).items()}
    torch.save(ref, tmp_path / "RRDB_ESRGAN_x4.pth")
    m = models.create("rrdbnet", nf=8, nb=2, gc=4)
    load_checkpoint(m, tmp_path / "RRDB_ESRGAN_x4.pth")
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(m(x), esrgan_reference_forward(ref, x, 2))


def test_pix2pix_unet_checkpoint_loads_including_pre_041_batchnorm(tmp_path):
    ref = randomize(pix2pix_unet_layout(2, 8))
    m = models.create("unet_256", ngf=2)
    assert set(ref) == set(m.state_dict())
    old = {k: v for k, v in ref.items() if not k.endswith("num_batches_tracked")}  # PyTorch < 0.4.1 files
    torch.save(old, tmp_path / "pix2pix.pth")
    load_checkpoint(m, tmp_path / "pix2pix.pth")
    assert_loaded(m, old)


def test_stargan_checkpoint_without_num_batches_tracked(tmp_path):
    # yunjey/stargan layout, conv_dim 4, one residual block: InstanceNorm with affine + running stats
    s: Shapes = {"main.0.weight": (4, 3 + 5, 7, 7), "main.3.weight": (8, 4, 4, 4), "main.6.weight": (16, 8, 4, 4),
                 "main.9.main.0.weight": (16, 16, 3, 3), "main.9.main.3.weight": (16, 16, 3, 3),
                 "main.10.weight": (16, 8, 4, 4), "main.13.weight": (8, 4, 4, 4), "main.16.weight": (3, 4, 7, 7)}
    for key, c in (("main.1", 4), ("main.4", 8), ("main.7", 16), ("main.9.main.1", 16), ("main.9.main.4", 16),
                   ("main.11", 8), ("main.14", 4)):
        norm_stats(s, key, c, affine=True)
    ref = {k: v for k, v in randomize(s).items() if not k.endswith("num_batches_tracked")}
    torch.save(ref, tmp_path / "200000-G.ckpt")
    m = models.create("stargan_g", conv_dim=4, repeat_num=1)
    load_checkpoint(m, tmp_path / "200000-G.ckpt")
    assert_loaded(m, ref)


@pytest.mark.parametrize("name,config", [("mobile_resnet_9blocks", None),
                                         ("sub_mobile_resnet_9blocks", "16_16_24_16_32_64_16_24")])
def test_gan_compression_checkpoint_loads(tmp_path, name, config):
    from gcompiler.models.mobile_resnet import config_widths

    if config is None:
        kw = {"ngf": 4}
        widths = dict(stem=4, down1=8, trunk=16, hidden=[16] * 9, up1=8, up2=4)
    else:
        kw = {"config": config}
        widths = config_widths(config)
    ref = randomize(gan_compression_layout(widths))
    torch.save(ref, tmp_path / "latest_net_G.pth")
    m = models.create(name, **kw)
    load_checkpoint(m, tmp_path / "latest_net_G.pth")
    assert_loaded(m, ref)


def test_cartoongan_scale_shift_names_load(tmp_path):
    m = models.create("cartoongan_g", ngf=4)
    ref = {}
    for k, v in m.state_dict().items():
        mod, _, leaf = k.rpartition(".")
        if mod.startswith("in"):
            leaf = {"weight": "scale", "bias": "shift"}[leaf]
        ref[f"{mod}.{leaf}"] = torch.randn_like(v)
    assert "in04_2.scale" in ref and "conv11_2.weight" in ref and "deconv03_1.bias" in ref
    torch.save(ref, tmp_path / "Hayao_net_G_float.pth")
    load_checkpoint(m, tmp_path / "Hayao_net_G_float.pth")
    assert torch.equal(m.in04_2.weight, ref["in04_2.scale"]) and torch.equal(m.in13_1.bias, ref["in13_1.shift"])


def test_vgg_loads_torchvision_layout_and_ignores_classifier(tmp_path):
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    shapes: Shapes = {}
    idx, cin = 0, 3
    for v in cfg:
        if v != "M":
            conv(shapes, f"features.{idx}", v, cin, 3)
            cin, idx = v, idx + 2
        else:
            idx += 1
    shapes.update({"classifier.0.weight": (16, 8), "classifier.0.bias": (16,)})  # shrunk; must be ignored
    ref = randomize(shapes)
    torch.save(ref, tmp_path / "vgg16-397923af.pth")
    m = models.create("vgg16_features", weights=tmp_path / "vgg16-397923af.pth")
    assert torch.equal(m.features[21].weight, ref["features.21.weight"])
    assert len(m.features) == 23 and "features.28.weight" in ref


# ----------------------------------------------------------------------------------- safetensors
def test_safetensors_round_trip_is_atomic(tmp_path):
    src = models.create("patchgan_d", ndf=4, norm="batch")
    with torch.no_grad():
        for b in src.buffers():
            b.add_(3)
    path = tmp_path / "sub" / "d.safetensors"
    assert save_checkpoint(src, path, metadata={"model": "patchgan_d"}) == path
    dst = load_checkpoint(models.create("patchgan_d", ndf=4, norm="batch"), path)
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k
    # overwrite in place; no temporary file left behind
    save_checkpoint(dst.state_dict(), path)
    assert os.listdir(path.parent) == ["d.safetensors"]


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "g.safetensors"
    m = models.create("dcgan_g", ngf=4, nz=8)
    save_checkpoint(m, path)
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(CheckpointError, match="disk full"):
        save_checkpoint(models.create("dcgan_g", ngf=4, nz=8), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["g.safetensors"]


def test_save_rejects_other_suffix_and_non_tensors(tmp_path):
    with pytest.raises(CheckpointError, match=r"\*\.safetensors"):
        save_checkpoint(models.create("dcgan_d", ndf=4), tmp_path / "d.pth")
    with pytest.raises(CheckpointError, match="'epoch'"):
        save_checkpoint({"w": torch.ones(2), "epoch": 3}, tmp_path / "d.safetensors")


def test_shared_storage_tensors_can_be_saved(tmp_path):
    w = torch.randn(4, 4)
    save_checkpoint({"a": w, "b": w, "c": w[0]}, tmp_path / "tied.safetensors")
    sd = read_state_dict(tmp_path / "tied.safetensors")
    assert torch.equal(sd["a"], w) and torch.equal(sd["c"], w[0])


# ----------------------------------------------------------------------------------- errors
def test_missing_and_directory_paths(tmp_path):
    m = models.create("dcgan_d", ndf=4)
    with pytest.raises(CheckpointError, match=r"not found: '.*nope\.pth'"):
        load_checkpoint(m, tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(m, tmp_path)


@pytest.mark.parametrize("fname,payload", [
    ("garbage.pth", b"this is not a checkpoint" * 4),
    ("empty.pt", b""),
    ("garbage.safetensors", b"\xff" * 64),
])
def test_corrupt_files(tmp_path, fname, payload):
    (tmp_path / fname).write_bytes(payload)
    with pytest.raises(CheckpointError, match=fname.replace(".", r"\.")):
        load_checkpoint(models.create("dcgan_d", ndf=4), tmp_path / fname)


def test_truncated_files(tmp_path):
    m = models.create("dcgan_d", ndf=4)
    torch.save(m.state_dict(), tmp_path / "full.pth")
    save_checkpoint(m, tmp_path / "full.safetensors")
    for name in ("full.pth", "full.safetensors"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match=f"cut_{name}".replace(".", r"\.") + ".*(corrupt|truncated)"):
            load_checkpoint(m, tmp_path / f"cut_{name}")


_RAN = []


class _Payload:
    """Unpickling this would call _RAN.append: weights_only must refuse before that."""

    def __reduce__(self):
        return (_RAN.append, ("executed",))


def test_pickle_with_arbitrary_object_is_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth.*weights_only=True"):
        load_checkpoint(models.create("dcgan_d", ndf=4), tmp_path / "evil.pth")
    assert _RAN == []


def test_non_state_dict_contents(tmp_path):
    torch.save({"epoch": 3, "note": "hello"}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match=r"not a state dict.*'epoch': int"):
        read_state_dict(tmp_path / "meta.pth")
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list"):
        read_state_dict(tmp_path / "list.pth")
    torch.save({}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(tmp_path / "empty.pth")


def test_mismatch_lists_missing_unexpected_and_shapes_and_leaves_model_unchanged(tmp_path):
    ref = randomize(cyclegan_resnet_layout(8, 9))
    ref.pop("model.26.weight")
    ref.pop("model.26.bias")
    for i in range(14):
        ref[f"extra.{i}.weight"] = torch.ones(1)
    torch.save(ref, tmp_path / "mixed.pth")
    m = models.create("resnet_9blocks", ngf=16)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(m, tmp_path / "mixed.pth")
    msg = str(info.value)
    assert "mixed.pth" in msg and "ResnetGenerator" in msg
    assert "missing from the checkpoint (2): model.26.bias, model.26.weight" in msg
    assert "unexpected in the checkpoint (14)" in msg and "... and 2 more" in msg
    assert "shape conflicts (" in msg and "model.1.weight: checkpoint [8, 3, 7, 7] vs model [16, 3, 7, 7]" in msg
    assert "width option" in msg
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_no_common_keys_hint_and_strict_false(tmp_path):
    torch.save(randomize(esrgan_layout(4, 1, 2)), tmp_path / "esrgan.pth")
    with pytest.raises(CheckpointError, match=r"no key in common.*conv_first"):
        load_checkpoint(models.create("dcgan_d", ndf=4), tmp_path / "esrgan.pth")

    ref = randomize(cyclegan_resnet_layout(4, 2))
    partial = {k: v for k, v in ref.items() if not k.startswith("model.19.")}  # head conv with 2 blocks
    partial["something.else"] = torch.zeros(3)
    torch.save(partial, tmp_path / "partial.pth")
    m = models.create("resnet_9blocks", ngf=4, n_blocks=2)
    head = m.model[19].weight.detach().clone()
    with pytest.raises(CheckpointError, match="strict=False"):
        load_checkpoint(m, tmp_path / "partial.pth")
    load_checkpoint(m, tmp_path / "partial.pth", strict=False)
    assert_loaded(m, {k: v for k, v in partial.items() if k != "something.else"})
    assert torch.equal(m.model[19].weight, head)


def test_shape_conflict_is_an_error_even_when_not_strict(tmp_path):
    torch.save(randomize(cyclegan_resnet_layout(4, 1)), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match="shape conflicts"):
        load_checkpoint(models.create("resnet_9blocks", ngf=8, n_blocks=1), tmp_path / "small.pth", strict=False)
