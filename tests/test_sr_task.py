"""Tests of the built-in x2 SR task, its metrics and the shipped teacher."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gcompiler.data import make_loader, open_dataset
from gcompiler.data.datasets import TeacherCachedDataset
from gcompiler.data.images import RANGE_UNIT, to_tensor
from gcompiler.data.sr import (HELDOUT_IMAGES, TEACHER_META, TRAIN_IMAGES, SRHeldoutDataset, SRTrainDataset,
                               bicubic_upsample, evaluate_sr, load_hr, load_lr, load_teacher)
from gcompiler.errors import DataError
from gcompiler.metrics import psnr, psnr_per_image, rgb_to_y, ssim, ssim_per_image

skmetrics = pytest.importorskip("skimage.metrics")


# ---------------------------------------------------------------- metrics

def test_psnr_hand_computed():
    x = torch.zeros(3, 4, 4)
    assert psnr(x, x + 0.1) == pytest.approx(20.0)  # MSE 0.01
    assert psnr(x, x + 0.5, data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.25))
    y = x.clone()
    y[:, 1:3, 1:3] = 0.2  # only the inner 2x2 differs
    assert psnr(x, y) == pytest.approx(10 * math.log10(1 / (0.04 * 4 / 16)))
    assert psnr(x, y, crop_border=1) == pytest.approx(10 * math.log10(1 / 0.04))
    assert psnr(x, x) == math.inf


def test_psnr_of_a_batch_is_the_mean_of_per_image_values():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.01)])
    per = psnr_per_image(x, y)
    assert per.tolist() == pytest.approx([20.0, 40.0])
    assert psnr(x, y) == pytest.approx(30.0)


def test_rgb_to_y_bt601_studio_range():
    white, black = torch.ones(3, 1, 1), torch.zeros(3, 1, 1)
    assert float(rgb_to_y(white)) == pytest.approx(235 / 255)
    assert float(rgb_to_y(black)) == pytest.approx(16 / 255)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert float(rgb_to_y(red)) == pytest.approx((16 + 65.481) / 255)


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_and_ssim_match_skimage(channels):
    rng = np.random.default_rng(channels)
    a = rng.random((channels, 23, 31))
    b = np.clip(a + 0.07 * rng.standard_normal(a.shape), 0, 1)
    ta, tb = torch.tensor(a), torch.tensor(b)
    ref_ssim = skmetrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                               data_range=1.0, channel_axis=0)
    assert ssim(ta, tb) == pytest.approx(ref_ssim, abs=1e-9)
    assert psnr(ta, tb) == pytest.approx(skmetrics.peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-9)
    inner = skmetrics.structural_similarity(a[:, 2:-2, 2:-2], b[:, 2:-2, 2:-2], gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, data_range=1.0, channel_axis=0)
    assert ssim(ta, tb, crop_border=2) == pytest.approx(inner, abs=1e-9)


def test_ssim_basic_properties():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.random((2, 3, 16, 16)))
    assert ssim_per_image(x, x).tolist() == pytest.approx([1.0, 1.0])
    assert ssim(x, 1 - x) < 0.0  # anti-correlated
    with pytest.raises(DataError, match="shape"):
        ssim(x, x[:, :, :8])
    with pytest.raises(DataError, match="at least 11x11"):
        ssim(x[..., :8, :8], x[..., :8, :8])
    with pytest.raises(DataError, match="crop_border"):
        psnr(x, x, crop_border=8)


# ---------------------------------------------------------------- the built-in task

def test_builtin_split_is_fixed_and_disjoint():
    assert TRAIN_IMAGES == ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina",
                            "motorcycle_left", "motorcycle_right", "camera", "brick", "grass", "gravel", "clock",
                            "moon")
    assert HELDOUT_IMAGES == ("chelsea", "rocket")
    assert not set(TRAIN_IMAGES) & set(HELDOUT_IMAGES)
    # Disjoint in content too, not only in names.
    for h in HELDOUT_IMAGES:
        for t in TRAIN_IMAGES:
            a, b = load_hr(h), load_hr(t)
            assert a.shape != b.shape or not np.array_equal(a, b)
    assert open_dataset("builtin:sr", split="eval").names == list(HELDOUT_IMAGES)
    assert open_dataset("builtin:sr").names == list(TRAIN_IMAGES)
    with pytest.raises(DataError, match="held-out"):
        SRTrainDataset(images=("astronaut", "rocket"))


def test_lr_is_the_antialiased_bicubic_of_hr_rounded_to_8_bits():
    hr, lr = load_hr("chelsea"), load_lr("chelsea")
    assert hr.shape == (300, 450, 3) and lr.shape == (150, 225, 3)
    t = torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].double() / 255
    ref = F.interpolate(t, scale_factor=0.5, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    got = torch.from_numpy(lr.copy()).permute(2, 0, 1)[None].double() / 255
    assert (got - ref).abs().max() <= 0.5 / 255 + 1e-6
    assert not load_hr("rocket").flags.writeable  # the cached arrays cannot be corrupted by a caller


def test_training_patches_are_aligned_lr_hr_pairs():
    ds = open_dataset("builtin:sr", crop_size=24, augment="dihedral", patches_per_epoch=16, seed=1)
    assert isinstance(ds, SRTrainDataset) and ds.value_range == RANGE_UNIT and len(ds) == 16
    loader = make_loader(ds, batch_size=8, seed=1, num_workers=0)
    batch = next(iter(loader))
    lr, hr = batch["input"], batch["target"]
    assert lr.shape == (8, 3, 24, 24) and hr.shape == (8, 3, 48, 48)
    assert 0.0 <= float(lr.min()) and float(hr.max()) <= 1.0
    # Downsampling the HR patch must give the LR patch (up to the patch border, where the whole-image
    # filter saw pixels outside the patch, and 8-bit rounding), whatever flip/transpose was drawn.
    down = F.interpolate(hr.double(), scale_factor=0.5, mode="bicubic", antialias=True,
                         align_corners=False).clamp(0, 1)
    err = (down - lr.double())[..., 3:-3, 3:-3].abs().max()  # taps reach 3 LR pixels out
    assert float(err) <= 0.5 / 255 + 1e-6


def test_training_scales_add_shrunk_sources_and_keep_pairs_aligned():
    ds = open_dataset("builtin:sr", crop_size=16, scales=(1.0, 0.5), patches_per_epoch=8, seed=0)
    n = len(TRAIN_IMAGES)
    assert ds.num_sources() == 2 * n and ds.names[:n] == list(TRAIN_IMAGES)
    assert ds.names[n] == f"{TRAIN_IMAGES[0]}@0.5"
    full, half = load_hr(TRAIN_IMAGES[0]), load_hr(TRAIN_IMAGES[0], 0.5)
    assert abs(half.shape[0] - full.shape[0] / 2) <= 2 and abs(half.shape[1] - full.shape[1] / 2) <= 2
    # the shrunk HR is the antialiased bicubic of the photo, and its LR partner is made from it as usual
    t = torch.from_numpy(full.copy()).permute(2, 0, 1)[None].double() / 255
    ref = F.interpolate(t, size=half.shape[:2], mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    got = torch.from_numpy(half.copy()).permute(2, 0, 1)[None].double() / 255
    assert float((got - ref)[..., 2:-2, 2:-2].abs().max()) <= 0.5 / 255 + 1e-6
    lr = torch.from_numpy(load_lr(TRAIN_IMAGES[0], 0.5).copy()).permute(2, 0, 1)[None].double() / 255
    down = F.interpolate(got, scale_factor=0.5, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    assert float((down - lr).abs().max()) <= 0.5 / 255 + 1e-6
    item = ds.load_views(n, np.random.default_rng(0))
    assert item[0]["input"][0] is load_lr(TRAIN_IMAGES[0], 0.5) and "@0.5" in item[2]
    assert load_hr("chelsea") is load_hr("chelsea", 1) and load_lr("rocket") is load_lr("rocket", 1.0)
    for bad in [(), (1.0, 1.0), (0.0,), (1.5,)]:
        with pytest.raises(DataError, match="scales"):
            SRTrainDataset(crop_size=16, scales=bad)
    with pytest.raises(DataError, match="scale"):
        load_hr("chelsea", 0.0)


def test_photo_weights_set_how_often_each_photo_is_drawn():
    ds = SRTrainDataset(crop_size=16, images=("coffee", "astronaut", "grace_hopper"), scales=(1.0, 0.5),
                        weights={"grace_hopper": 4.0, "astronaut": 0.0})
    assert ds.weights == {"coffee": 1.0, "astronaut": 0.0, "grace_hopper": 4.0}
    rng = np.random.default_rng(0)
    counts = np.bincount([ds.source_of(i, rng) for i in range(20000)], minlength=ds.num_sources())
    by_photo = {n: 0 for n in ds.images}
    for (name, _), c in zip(ds._sources, counts):
        by_photo[name] += c
    assert by_photo["astronaut"] == 0
    assert abs(by_photo["grace_hopper"] / 20000 - 0.8) < 0.015 and abs(by_photo["coffee"] / 20000 - 0.2) < 0.015
    assert abs(int(counts[2]) - int(counts[5])) < 0.1 * counts[2]  # both scales of a photo share its weight
    # no weights: the uniform draw of the shipped teachers, unchanged
    plain = SRTrainDataset(crop_size=16)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert [plain.source_of(i, rng_a) for i in range(50)] == [int(rng_b.integers(0, len(TRAIN_IMAGES)))
                                                             for _ in range(50)]
    for bad, match in [({"rocket": 1.0}, "not training images"), ({"coffee": -1.0}, ">= 0"),
                       ({"coffee": float("inf")}, ">= 0"), ({"coffee": 0.0, "astronaut": 0.0}, "all zero")]:
        with pytest.raises(DataError, match=match):
            SRTrainDataset(crop_size=16, images=("coffee", "astronaut"), weights=bad)
    with pytest.raises(DataError, match="twice"):
        SRTrainDataset(crop_size=16, images=("coffee", "coffee"))


def test_channel_shuffle_permutes_the_channels_of_input_and_target_alike():
    kw = dict(crop_size=12, images=("coffee", "astronaut"), augment="dihedral", seed=5)
    plain, shuffled = SRTrainDataset(**kw), SRTrainDataset(channel_shuffle=True, **kw)
    orders = set()
    for i in range(40):
        a, b = plain[i], shuffled[i]  # same patch and flips: the order is drawn last
        match = [o for o in itertools.permutations(range(3))
                 if torch.equal(b["input"], a["input"][list(o)]) and torch.equal(b["target"], a["target"][list(o)])]
        assert match, i
        orders.add(match[0])
    assert len(orders) == 6  # every order occurs, the identity among them
    assert all(torch.equal(plain[i]["target"], SRTrainDataset(**kw)[i]["target"]) for i in range(5))
    # a cached teacher output is no target for a shuffled input: refused, by name
    with pytest.raises(DataError, match="channel_shuffle"):
        TeacherCachedDataset(shuffled, torch.nn.Upsample(scale_factor=2), progress=False)
    TeacherCachedDataset(plain, torch.nn.Upsample(scale_factor=2), progress=False)  # without it: fine
    # any other view reaching the shuffle is refused by name, not left in its own colour order
    aligned, unaligned, where = shuffled.load_views(0, np.random.default_rng(0))
    aligned = dict(aligned, teacher=aligned["target"])
    with pytest.raises(DataError, match="cannot shuffle the 'teacher' view"):
        shuffled.finish(0, aligned, unaligned, where, np.random.default_rng(0))


def test_heldout_dataset_gives_whole_images():
    ds = open_dataset("builtin:sr", split="eval")
    assert isinstance(ds, SRHeldoutDataset)
    item = ds[1]
    assert item["input"].shape == (3, 213, 320) and item["target"].shape == (3, 426, 640)
    assert torch.equal(item["target"], to_tensor(load_hr("rocket"), RANGE_UNIT))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        open_dataset("builtin:sr", value_range=(-1, 1))


def test_evaluate_sr_scores_a_bicubic_model_like_bicubic():
    class Bicubic(torch.nn.Module):
        def forward(self, x):
            return bicubic_upsample(x)

    res = evaluate_sr(Bicubic(), images=("chelsea",), reference=Bicubic())
    row = res["per_image"]["chelsea"]
    assert row["model"] == row["bicubic"]
    assert row["model_vs_reference"]["psnr_y"] == math.inf
    assert 30.0 < row["bicubic"]["psnr_y"] < 45.0 and 0.8 < row["bicubic"]["ssim_y"] <= 1.0
    with pytest.raises(DataError, match="does not match the HR shape"):
        evaluate_sr(torch.nn.Identity(), images=("chelsea",))


def test_missing_teacher_asset_tells_how_to_make_it(tmp_path):
    with pytest.raises(DataError, match="scripts/train_teacher.py"):
        load_teacher(weights=tmp_path / "none.safetensors")


def test_shipped_teacher_beats_bicubic_on_a_heldout_image():
    teacher = load_teacher()
    assert all(p.dtype == torch.float32 for p in teacher.parameters())  # fp16 storage, float32 model
    meta = json.loads(TEACHER_META.read_text())
    assert sum(p.numel() for p in teacher.parameters()) == meta["params"]  # the network the record describes
    res = evaluate_sr(teacher, images=("chelsea",))["per_image"]["chelsea"]
    assert res["model"]["psnr_y"] > res["bicubic"]["psnr_y"] + 1.0
    assert res["model"]["ssim_y"] > res["bicubic"]["ssim_y"]


def test_teacher_cache_over_the_builtin_photos_stays_aligned():
    from gcompiler.data import TeacherCachedDataset

    class Nearest(torch.nn.Module):  # a stand-in teacher whose output is easy to predict
        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode="nearest")

    base = SRTrainDataset(crop_size=16, augment="dihedral", patches_per_epoch=8,
                          images=("astronaut", "coffee"), seed=3)
    ds = TeacherCachedDataset(base, Nearest(), progress=False)
    assert ds.num_sources() == 2 and ds.teacher_scale == 2 and len(ds) == 8
    for i in range(8):
        item = ds[i]
        assert item["teacher"].shape == item["target"].shape == (3, 32, 32)
        up = item["input"].repeat_interleave(2, 1).repeat_interleave(2, 2)
        assert torch.allclose(item["teacher"], up, atol=1e-3)  # float16 cache
