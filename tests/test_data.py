"""Tests of gcompiler.data: folder datasets, augmentation alignment, bad input, resumable loading."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gcompiler.data import (AlignedDataset, PairedFolderDataset, ResumableSampler, SampleKey, SingleFolderDataset,
                            TeacherCachedDataset, UnpairedFolderDataset, crop_and_flip, make_loader, open_dataset,
                            to_tensor, to_uint8)
from gcompiler.data.images import IMAGE_EXTENSIONS, RANGE_GAN, RANGE_UNIT, load_image
from gcompiler.data.spec import parse_spec
from gcompiler.errors import DataError


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _rand_img(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _keys(n: int, seed: int = 7, size: int = 3) -> list[SampleKey]:
    """``n`` sampler keys over a dataset of ``size`` items, each with its own augmentation entropy."""
    return [SampleKey(i % size, (seed, 0, i)) for i in range(n)]


# ---------------------------------------------------------------- conversions

def test_value_ranges_map_the_extreme_levels_exactly():
    arr = np.array([[[0, 255, 51]]], dtype=np.uint8)
    g = to_tensor(arr, RANGE_GAN)
    u = to_tensor(arr, RANGE_UNIT)
    assert g.shape == (3, 1, 1) and g.dtype == torch.float32
    assert g.flatten().tolist() == pytest.approx([-1.0, 1.0, 51 / 127.5 - 1])
    assert u.flatten().tolist() == pytest.approx([0.0, 1.0, 0.2])
    assert np.array_equal(to_uint8(g, RANGE_GAN), arr)
    assert np.array_equal(to_uint8(u[None], RANGE_UNIT), arr)


def test_to_uint8_clamps_out_of_range_values():
    t = torch.tensor([-3.0, 0.0, 7.0]).view(3, 1, 1)
    assert to_uint8(t, RANGE_GAN).flatten().tolist() == [0, 128, 255]


# ---------------------------------------------------------------- single folder and bad input

def test_single_folder_crops_shapes_and_range(tmp_path):
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 50), (33, 64), (48, 48)]):
        _png(tmp_path / f"im{i}.png", _rand_img(rng, h, w))
    (tmp_path / "notes.txt").write_text("not an image")
    ds = SingleFolderDataset(tmp_path, crop_size=32)
    assert len(ds) == 3 and ds.report.used == 3 and not ds.report.skipped
    for key in _keys(6):
        item = ds[key]
        assert set(item) == {"input", "index"}
        assert item["input"].shape == (3, 32, 32) and item["input"].dtype == torch.float32
        assert -1.0 <= item["input"].min() and item["input"].max() <= 1.0


def test_single_folder_crop_is_a_window_of_the_image(tmp_path):
    rng = np.random.default_rng(1)
    img = _rand_img(rng, 30, 41)
    _png(tmp_path / "a.png", img)
    ds = SingleFolderDataset(tmp_path, crop_size=16, flip=False, value_range=RANGE_UNIT)
    full = to_tensor(img, RANGE_UNIT)
    for key in [SampleKey(0, (1, 0, p)) for p in range(5)]:
        crop = ds[key]["input"]
        windows = full.unfold(1, 16, 1).unfold(2, 16, 1)  # (3, H-15, W-15, 16, 16)
        match = (windows == crop[:, None, None]).flatten(3).all(dim=3).all(dim=0)
        assert match.any()


def test_empty_folder_error_names_folder_and_extensions(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError) as e:
        SingleFolderDataset(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and ".png" in msg and ".jpg" in msg and "sub" in msg
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(str(tmp_path / "nope"))


def test_corrupt_image_is_skipped_with_a_warning_and_reported(tmp_path):
    rng = np.random.default_rng(2)
    _png(tmp_path / "good.png", _rand_img(rng, 20, 20))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (tmp_path / "bad2.jpg").write_bytes(b"")
    with pytest.warns(UserWarning) as rec:
        ds = SingleFolderDataset(tmp_path)
    warned = " ".join(str(w.message) for w in rec)
    assert "bad.png" in warned and "bad2.jpg" in warned
    assert len(ds) == 1 and ds.names == ["good.png"]
    assert {Path(p).name for p, _ in ds.report.skipped} == {"bad.png", "bad2.jpg"}
    assert "2 unreadable skipped" in ds.report.summary()
    with pytest.raises(DataError, match="bad"):
        SingleFolderDataset(tmp_path, strict=True)


def test_folder_of_only_corrupt_images_fails(tmp_path):
    (tmp_path / "x.png").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="no readable images"):
            SingleFolderDataset(tmp_path)


def test_undecodable_file_names_the_file(tmp_path):
    p = tmp_path / "broken.png"
    p.write_bytes(b"nope")
    with pytest.raises(DataError, match="broken.png"):
        load_image(p)


def test_truncated_image_fails_when_loaded_naming_it(tmp_path):
    rng = np.random.default_rng(3)
    p = _png(tmp_path / "t.jpg", _rand_img(rng, 64, 64))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # JPEG header intact, scan data cut
    ds = SingleFolderDataset(tmp_path, strict=True)  # the structural check reads headers only
    with pytest.raises(DataError, match="t.jpg"):
        ds[0]


def test_crop_larger_than_an_image_is_refused_naming_it(tmp_path):
    rng = np.random.default_rng(4)
    _png(tmp_path / "big.png", _rand_img(rng, 64, 64))
    _png(tmp_path / "small.png", _rand_img(rng, 20, 30))
    with pytest.raises(DataError, match=r"small\.png.*30x20"):
        SingleFolderDataset(tmp_path, crop_size=24)


def test_full_images_without_crop(tmp_path):
    rng = np.random.default_rng(5)
    _png(tmp_path / "a.png", _rand_img(rng, 21, 34))
    ds = open_dataset(str(tmp_path), split="eval")
    item = ds[0]
    assert item["input"].shape == (3, 21, 34)
    assert torch.equal(item["input"], to_tensor(load_image(tmp_path / "a.png"), RANGE_GAN))  # eval: no flip


def test_grayscale_images_become_rgb_and_channels_1(tmp_path):
    g = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    ds3 = SingleFolderDataset(tmp_path, flip=False)
    ds1 = SingleFolderDataset(tmp_path, flip=False, channels=1)
    x3, x1 = ds3[0]["input"], ds1[0]["input"]
    assert x3.shape == (3, 8, 8) and x1.shape == (1, 8, 8)
    assert torch.equal(x3[0], x3[2]) and torch.equal(x3[0], x1[0])


# ---------------------------------------------------------------- paired data stays aligned

def test_side_by_side_pairs_stay_aligned_under_crop_and_flip(tmp_path):
    rng = np.random.default_rng(6)
    for i in range(3):
        a = _rand_img(rng, 36, 40)
        _png(tmp_path / f"p{i}.png", np.concatenate([a, 255 - a], axis=1))  # B = inverted A
    ds = AlignedDataset(tmp_path, crop_size=24)
    flips = 0
    for key in _keys(24):
        item = ds[key]
        assert item["input"].shape == item["target"].shape == (3, 24, 24)
        # In [-1, 1], 255 - a maps to -(a) (up to float rounding): same window, same flip.
        assert torch.allclose(item["target"], -item["input"], atol=1e-6)
        src = to_tensor(load_image(ds.files[item["index"]])[:, :40], RANGE_GAN)
        win = src.unfold(1, 24, 1).unfold(2, 24, 1)
        flips += not bool((win == item["input"][:, None, None]).flatten(3).all(3).all(0).any())
    assert 0 < flips < 24  # some items flipped, some not
    ds_b = AlignedDataset(tmp_path, crop_size=24, direction="BtoA")
    it = ds_b[_keys(1)[0]]
    assert torch.allclose(it["target"], -it["input"], atol=1e-6)


def test_side_by_side_odd_width_is_skipped(tmp_path):
    rng = np.random.default_rng(7)
    _png(tmp_path / "ok.png", _rand_img(rng, 10, 20))
    _png(tmp_path / "odd.png", _rand_img(rng, 10, 21))
    with pytest.warns(UserWarning, match="odd width"):
        ds = AlignedDataset(tmp_path)
    assert ds.names == ["ok.png"] and ds.report.used == 1
    with pytest.raises(DataError, match="odd.png"):
        AlignedDataset(tmp_path, strict=True)


def test_paired_folders_matched_by_name_and_aligned(tmp_path):
    rng = np.random.default_rng(8)
    for name in ("x", "y", "z"):
        a = _rand_img(rng, 30, 28)
        _png(tmp_path / "A" / f"{name}.png", a)
        _png(tmp_path / "B" / f"{name}.png", 255 - a)
    _png(tmp_path / "A" / "orphan.png", _rand_img(rng, 30, 28))
    with pytest.warns(UserWarning, match="no partner"):
        ds = PairedFolderDataset(tmp_path, crop_size=16)
    assert ds.names == ["x", "y", "z"] and ds.scale == 1
    assert [Path(p).name for p in ds.report.unmatched] == ["orphan.png"]
    for key in _keys(12):
        item = ds[key]
        assert torch.allclose(item["target"], -item["input"], atol=1e-6)
    with pytest.raises(DataError, match="no partner"):
        PairedFolderDataset(tmp_path, strict=True)


def test_paired_folders_with_a_scale_factor(tmp_path):
    rng = np.random.default_rng(9)
    for name in ("a", "b"):
        lo = _rand_img(rng, 20, 24)
        _png(tmp_path / "A" / f"{name}.png", lo)
        _png(tmp_path / "B" / f"{name}.png", lo.repeat(2, axis=0).repeat(2, axis=1))  # nearest x2
    ds = open_dataset(str(tmp_path), crop_size=12)
    assert isinstance(ds, PairedFolderDataset) and ds.scale == 2
    for key in _keys(10, size=2):
        item = ds[key]
        assert item["target"].shape == (3, 24, 24)
        up = item["input"].repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
        assert torch.equal(item["target"], up)


def test_paired_folders_with_mismatched_sizes_fail(tmp_path):
    rng = np.random.default_rng(10)
    _png(tmp_path / "A" / "k.png", _rand_img(rng, 20, 20))
    _png(tmp_path / "B" / "k.png", _rand_img(rng, 20, 30))
    with pytest.raises(DataError, match="k.png"):
        PairedFolderDataset(tmp_path)


def test_unpaired_folders(tmp_path):
    rng = np.random.default_rng(11)
    for i in range(2):
        _png(tmp_path / "trainA" / f"a{i}.png", np.full((20, 20, 3), 10 * i, np.uint8))
    for i in range(5):
        _png(tmp_path / "trainB" / f"b{i}.png", np.full((22, 22, 3), 100 + 10 * i, np.uint8))
    ds = open_dataset(str(tmp_path), crop_size=16)
    assert isinstance(ds, UnpairedFolderDataset) and len(ds) == 5
    levels_b = set()
    for key in _keys(30):
        item = ds[key]
        assert set(item) == {"input", "reference", "index"}
        assert item["reference"].shape == (3, 16, 16)
        a_level = round((float(item["input"][0, 0, 0]) + 1) * 127.5)
        assert a_level == 10 * (item["index"] % 2)
        levels_b.add(round((float(item["reference"][0, 0, 0]) + 1) * 127.5))
        assert torch.equal(ds[key]["reference"], item["reference"])  # same key, same draw
    assert levels_b <= {100, 110, 120, 130, 140} and len(levels_b) >= 3


@settings(deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), s=st.integers(1, 3), data=st.data())
def test_crop_and_flip_keeps_views_aligned_property(h, w, s, data):
    crop = data.draw(st.integers(1, min(h, w)))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng0 = np.random.default_rng(seed)
    base = rng0.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    big = base.repeat(s, axis=0).repeat(s, axis=1)
    as_tensor = torch.from_numpy(big.copy()).permute(2, 0, 1).float()
    out = crop_and_flip({"input": (base, 1), "target": (big, s), "t": (as_tensor, s)}, crop, True,
                        np.random.default_rng(seed))
    assert out["input"].shape == (crop, crop, 3)
    up = out["input"].repeat(s, axis=0).repeat(s, axis=1)
    assert np.array_equal(out["target"], up)
    assert torch.equal(out["t"], torch.from_numpy(up.copy()).permute(2, 0, 1).float())


def test_crop_and_flip_rejects_mis_sized_views():
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(DataError, match="target"):
        crop_and_flip({"input": (a, 1), "target": (np.zeros((15, 16, 3), np.uint8), 2)}, 4, False,
                      np.random.default_rng(0))


# ---------------------------------------------------------------- teacher cache

def test_teacher_cache_aligns_teacher_outputs(tmp_path):
    rng = np.random.default_rng(12)
    for i in range(2):
        _png(tmp_path / "imgs" / f"{i}.png", _rand_img(rng, 18, 22))
    base = SingleFolderDataset(tmp_path / "imgs", crop_size=8)
    teacher = torch.nn.Upsample(scale_factor=2, mode="nearest")
    cache = tmp_path / "cache"
    ds = TeacherCachedDataset(base, teacher, cache_dir=cache, progress=False)
    assert ds.teacher_scale == 2 and len(list(cache.glob("*.safetensors"))) == 2
    for key in _keys(8, size=2):
        item = ds[key]
        up = item["input"].repeat_interleave(2, 1).repeat_interleave(2, 2)
        # float16 storage: values in [-1, 1] round to within 2^-11
        assert torch.allclose(item["teacher"], up, atol=1e-3)
    ds2 = TeacherCachedDataset(base, teacher, cache_dir=cache, progress=False)  # reuses files
    k = _keys(1, size=2)[0]
    assert torch.equal(ds2[k]["teacher"], ds[k]["teacher"])


def test_teacher_cache_rejects_a_teacher_that_does_not_fit(tmp_path):
    rng = np.random.default_rng(13)
    _png(tmp_path / "0.png", _rand_img(rng, 18, 22))
    base = SingleFolderDataset(tmp_path)
    bad = torch.nn.Conv2d(3, 3, 3)  # valid conv: 16x20 output for an 18x22 input
    with pytest.raises(DataError, match="does not match"):
        TeacherCachedDataset(base, bad, progress=False)


# ---------------------------------------------------------------- specs

def test_spec_parsing_and_auto_detection(tmp_path):
    rng = np.random.default_rng(14)
    _png(tmp_path / "single" / "a.png", _rand_img(rng, 8, 8))
    for n in "ab":
        _png(tmp_path / "pair" / "A" / f"{n}.png", _rand_img(rng, 8, 8))
        _png(tmp_path / "pair" / "B" / f"{n}.jpg", _rand_img(rng, 8, 8))
    _png(tmp_path / "unp" / "A" / "a.png", _rand_img(rng, 8, 8))
    _png(tmp_path / "unp" / "B" / "q.png", _rand_img(rng, 8, 8))
    assert parse_spec(str(tmp_path / "single")) == ("single", str(tmp_path / "single"))
    assert parse_spec(str(tmp_path / "pair"))[0] == "paired"
    assert parse_spec(str(tmp_path / "unp"))[0] == "unpaired"
    assert parse_spec("aligned:" + str(tmp_path / "single")) == ("aligned", str(tmp_path / "single"))
    assert parse_spec("unpaired:" + str(tmp_path / "pair"))[0] == "unpaired"
    assert parse_spec("builtin:sr") == ("builtin:sr", None)
    assert parse_spec("builtin:cartoon") == ("builtin:cartoon", None)
    assert isinstance(open_dataset("single:" + str(tmp_path / "single")), SingleFolderDataset)
    with pytest.raises(DataError, match="builtin:sr, builtin:cartoon"):
        parse_spec("builtin:imagenet")
    with pytest.raises(DataError, match="empty"):
        parse_spec("  ")
    with pytest.raises(DataError, match="unknown option"):
        open_dataset(str(tmp_path / "single"), direction="AtoB")
    with pytest.raises(DataError, match="split"):
        open_dataset(str(tmp_path / "single"), split="test")
    assert IMAGE_EXTENSIONS[0] == ".png"


# ---------------------------------------------------------------- sampler and resume

def test_sampler_epochs_are_permutations_and_seeded():
    s = ResumableSampler(10, seed=3)
    e0 = [k.index for k in s]
    assert sorted(e0) == list(range(10))
    s.set_epoch(1)
    e1 = [k.index for k in s]
    assert sorted(e1) == list(range(10)) and e1 != e0
    s2 = ResumableSampler(10, seed=3)
    assert [k.index for k in s2] == e0
    assert [k.index for k in ResumableSampler(10, seed=4)] != e0
    assert [k.index for k in ResumableSampler(10, shuffle=False)] == list(range(10))


def test_sampler_ddp_replicas_are_disjoint_and_cover_the_data():
    reps = [ResumableSampler(11, seed=1, num_replicas=3, rank=r) for r in range(3)]
    got = [[k.index for k in s] for s in reps]
    assert all(len(g) == 4 for g in got)  # padded to 12
    flat = sum(got, [])
    assert set(flat) == set(range(11)) and len(flat) == 12
    positions = sorted(k.entropy[2] for s in reps for k in s)
    assert positions == list(range(12))


def test_sampler_state_mismatch_is_refused():
    s = ResumableSampler(10, seed=1)
    state = s.state_dict()
    with pytest.raises(DataError, match="seed"):
        ResumableSampler(10, seed=2).load_state_dict(state)
    with pytest.raises(DataError, match="length"):
        ResumableSampler(12, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="lacks"):
        s.load_state_dict({"seed": 1})


def _stream(tmp_path: Path, workers: int):
    ds = SingleFolderDataset(tmp_path, crop_size=8)
    return make_loader(ds, batch_size=2, seed=5, num_workers=workers)


@pytest.fixture()
def five_images(tmp_path):
    rng = np.random.default_rng(15)
    for i in range(5):
        _png(tmp_path / f"{i}.png", _rand_img(rng, 12, 12))
    return tmp_path


def test_loader_resume_gives_the_same_batches(five_images):
    ref = _stream(five_images, 0)
    assert len(ref) == 2  # 5 samples, batch 2, drop_last
    it = ref.batches()
    full = [next(it) for _ in range(7)]  # crosses three epoch boundaries
    first = _stream(five_images, 0)
    it = first.batches()
    for _ in range(3):
        next(it)
    state = first.state_dict()
    assert state["epoch"] == 1 and state["index"] == 2
    resumed = _stream(five_images, 0)
    resumed.load_state_dict(state)
    it = resumed.batches()
    rest = [next(it) for _ in range(4)]
    for a, b in zip(full[3:], rest):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["input"], b["input"])


def test_loader_with_a_worker_matches_the_main_process(five_images):
    a = _stream(five_images, 0)
    b = _stream(five_images, 1)
    ia, ib = a.batches(), b.batches()
    for _ in range(3):
        x, y = next(ia), next(ib)
        assert torch.equal(x["input"], y["input"]) and torch.equal(x["index"], y["index"])
    assert a.state_dict() == b.state_dict()


def test_loader_refuses_a_batch_larger_than_the_data(five_images):
    ds = SingleFolderDataset(five_images)
    with pytest.raises(DataError, match="fewer than batch_size"):
        make_loader(ds, batch_size=8, num_workers=0)
    loader = make_loader(ds, batch_size=8, num_workers=0, drop_last=False)
    assert [len(b["index"]) for b in loader] == [5]


# ---------------------------------------------------------------- source subsets (validation splits)
def _constant_folder(path: Path, n: int, size: int = 12) -> Path:
    """``n`` images, image ``i`` filled with the grey level ``20 * i + 10`` (a crop tells its source)."""
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), 20 * i + 10, np.uint8)).save(path / f"img{i}.png")
    return path


class _RandomPick(SingleFolderDataset):
    """A base that draws its source at random for every item (as builtin:sr and builtin:cartoon do)."""

    random_sources = True

    def __len__(self) -> int:
        return 64

    def num_sources(self) -> int:
        return len(self.files)

    def source_of(self, index, rng):
        return int(rng.integers(0, len(self.files)))


def _source_levels(ds) -> set[int]:
    levels = set()
    for i in range(len(ds)):
        x = ds[SampleKey(i, (7, i))]["input"]
        assert torch.equal(x, x.flatten()[0].expand_as(x))  # one source per crop
        levels.add(round((float(x.flatten()[0]) + 1) / 2 * 255))
    return levels


@pytest.mark.parametrize("base_cls", [SingleFolderDataset, _RandomPick])
def test_source_subsets_never_share_a_source(tmp_path, base_cls):
    from gcompiler.data import SourceSubset

    base = base_cls(_constant_folder(tmp_path / "d", 6), crop_size=8, seed=0)
    held, rest = SourceSubset(base, [1, 4]), SourceSubset(base, [0, 2, 3, 5])
    assert held.num_sources() == 2 and rest.num_sources() == 4
    assert held.names == [base.names[1], base.names[4]]
    assert _source_levels(held) == {30, 90}  # images 1 and 4, and every crop from one of them
    assert _source_levels(rest) == {10, 50, 70, 110}
    assert len(held) == (64 if base.random_sources else 2)
    assert held.value_range == base.value_range and held.crop_size == 8


def test_source_subset_rejects_bad_sources(tmp_path):
    from gcompiler.data import SourceSubset

    base = SingleFolderDataset(_constant_folder(tmp_path / "d", 3), crop_size=8)
    with pytest.raises(DataError, match=r"out of range for a dataset of 3 sources"):
        SourceSubset(base, [0, 3])
    with pytest.raises(DataError, match="at least one source"):
        SourceSubset(base, [])
