"""GAN Compression method: feature taps, sliced mapping layers, once-for-all sampling, end to end under a budget."""
from __future__ import annotations

import json
import operator

import pytest
import torch
import torch.nn.functional as F

import gcompiler
from gcompiler import models
from gcompiler.errors import ConfigError
from gcompiler.methods import get_method
from gcompiler.methods.gan_compression import (GANCompressionOptions, OnceForAll, SlicedFeatureLoss,
                                               residual_taps)
from gcompiler.supernet import make_supernet, search_space, set_config
from gcompiler.train import DistillConfig, FeatureDistillLoss
from gcompiler.train.taps import TappedModel
from test_compress_cli import make_folder, run


def test_default_taps_are_trunk_input_and_blocks_3_6_9():
    gm = gcompiler.trace(models.create("resnet_9blocks", ngf=4), torch.randn(1, 3, 32, 32))
    adds = [n.name for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.add]
    trunk_in = next(n.name for n in gm.graph.nodes if n.op == "call_module" and n.target == "model.9")
    assert len(adds) == 9
    assert residual_taps(gm) == [trunk_in, adds[2], adds[5], adds[8]]
    mobile = gcompiler.trace(models.create("mobile_resnet_9blocks", ngf=4), torch.randn(1, 3, 32, 32))
    assert residual_taps(mobile)[0] == next(n.name for n in mobile.graph.nodes if n.target == "model.9")


def test_taps_on_the_supernet_follow_the_active_widths_and_the_mappings_slice():
    torch.manual_seed(0)
    teacher = models.create("resnet_9blocks", ngf=4, n_blocks=3).eval()
    x = torch.randn(2, 3, 32, 32)
    sn = make_supernet(teacher, x)
    t_gm = gcompiler.trace(teacher, x)
    taps = residual_taps(sn)
    pairs = list(zip(taps, taps))
    s_run, t_run = TappedModel(sn, taps), TappedModel(t_gm, taps)
    loss = SlicedFeatureLoss(pairs, s_run.channels(), t_run.channels())
    plain = FeatureDistillLoss(pairs, s_run.channels(), t_run.channels())
    plain.load_state_dict(loss.state_dict())
    with torch.no_grad():
        for conv in loss.maps.values():  # not the identity, so that slicing matters
            conv.weight.add_(torch.randn_like(conv.weight) * 0.1)
        plain.load_state_dict(loss.state_dict())
        _, tf = t_run(x)
        _, sf = s_run(x)
        assert torch.equal(loss(sf, tf), plain(sf, tf))  # full width: the ordinary mapping
        widths = set_config(sn, "3_2_2_1_2_3_2_1")
        _, sf = s_run(x)
        trunk = widths[next(g for g in widths if g == "model_7")]
        assert all(f.shape[1] == trunk for f in sf.values())  # trunk input and block outputs are trunk-wide
        loss.slices = {s: sn.meta["supernet"]["plan"].kept(widths).get(s) for s in taps}
        want = sum(F.mse_loss(F.conv2d(sf[s], conv.weight[:, :trunk], conv.bias), tf[t])
                   for (s, t), conv in zip(pairs, loss.maps.values()))
        torch.testing.assert_close(loss(sf, tf), want)


def test_once_for_all_sampling_is_per_step_and_sandwich_brackets():
    sn = make_supernet(models.create("srresnet", nf=8, nb=2, scale=2), torch.randn(1, 3, 8, 8))
    space = search_space(sn, choices=[0.25, 0.5, 1.0], round_to=2)
    cfg = DistillConfig(pixel="l1")
    r = OnceForAll(cfg, space=space, taps=[], feature_weight=0.0, sandwich=False, seed=3, freeze_norm_stats=True)
    assert r.sample(5) == r.sample(5) and len({r.sample(i)[0] for i in range(20)}) > 5
    sw = OnceForAll(cfg, space=space, taps=[], feature_weight=0.0, sandwich=True, seed=3, freeze_norm_stats=True)
    big, rand, small = sw.sample(7)
    assert big == space.largest() and small == space.smallest() and rand == r.sample(7)[0]


def test_options_validation():
    info = get_method("gan-compression")
    with pytest.raises(ConfigError, match="fid_weights"):
        info.make_options({"metric": "fid"})
    with pytest.raises(ConfigError, match="choices"):
        info.make_options({"choices": "0.5,2"})
    with pytest.raises(ConfigError, match="feature_taps"):
        info.make_options({"feature_taps": "add_1"})
    opts = info.make_options({"feature_taps": "a=b, c=d", "choices": "0.25,1"})
    assert isinstance(opts, GANCompressionOptions) and opts.tap_pairs() == [("a", "b"), ("c", "d")]


FAST = ["--crop", "16", "--batch-size", "2", "--workers", "0", "--threads", "1", "--quiet", "--sample-every", "0",
        "--bits", "32", "--opt", "disc_layers=2", "--opt", "disc_ndf=8"]


def test_end_to_end_under_a_macs_budget(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n=6, size=24)
    out = tmp_path / "run"
    teacher = ["--teacher", "resnet_9blocks", "--teacher-kw", "ngf=4", "--teacher-kw", "n_blocks=3",
               "--macs-size", "16"]
    rc, stdout, err = run(capsys, *teacher, "--data", str(data), "--method", "gan-compression",
                          "--target-macs", "3x", "--max-steps", "3", "--finetune-steps", "0", "--out", str(out),
                          "--opt", "search_evals=8", "--opt", "population=4", "--opt", "search_images=4", *FAST)
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    report = json.loads((out / "report.json").read_text())
    search = json.loads((out / "search.json").read_text())
    budget = summary["macs_before"] / 3
    assert summary["method"] == "gan-compression" and summary["steps"] == 3
    assert summary["macs_after"] <= budget and summary["macs_after"] == search["chosen_macs"]
    assert search["evaluations"] == 8 and all(c["macs"] <= budget for c in search["candidates"])
    assert search["chosen"] in [c["config"] for c in search["candidates"]]
    assert len(search["chosen"].split("_")) == 8  # a ResNet: GAN Compression's config string
    check = report["cost_check"]  # the shared cost model, the supernet's table (used by the search), the profile
    assert check["estimate"] == check["cost_table"] == check["profile"] == summary["macs_after"]
    assert report["recon_target"] == "teacher" and report["d_real"] == "teacher"  # a single folder is unpaired
    assert len(report["feature_taps"]) == 4 and [r["pass"] for r in report["pass_log"]] == ["insert-masks", "make-supernet"]
    assert (out / "pareto.png").stat().st_size > 5000
    # 6 images (too few to hold any out for evaluation): one is held out of training for the search
    assert report["search_split"].startswith("1 of the 6 training images held out")
    assert report["search"]["split"].startswith("4 crops") and "1 of the 6" in report["search"]["split"]
    student = gcompiler.load(out)
    assert gcompiler.profile(student).macs == summary["macs_after"]
    assert student(torch.rand(1, 3, 16, 16) * 2 - 1).shape == (1, 3, 16, 16)


def test_mobile_student_through_substitute_ops(tmp_path, capsys):
    data = make_folder(tmp_path / "data", n=4, size=24)
    out = tmp_path / "run"
    rc, _, err = run(capsys, "--teacher", "resnet_9blocks", "--teacher-kw", "ngf=4", "--teacher-kw", "n_blocks=3",
                     "--macs-size", "16", "--data", str(data), "--method", "gan-compression", "--max-steps", "2",
                     "--finetune-steps", "1", "--target-macs", "1.5x", "--opt", "student=mobile", "--out", str(out),
                     "--opt", "search_evals=6", "--opt", "population=3", "--opt", "search_images=2", *FAST)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert [r["pass"] for r in report["pass_log"]] == ["substitute-ops", "derive-architecture", "insert-masks",
                                                            "make-supernet"]
    assert report["supernet"]["space"] == "groups"  # inverted residual blocks: widths per group, not the string
    assert any(g.endswith("_expand") for g in report["supernet"]["groups"])
    assert summary["macs_after"] <= summary["macs_before"] / 1.5
    # taps: trunk input and the three residual additions, paired by position with the teacher's
    assert [t for t, _ in report["feature_taps"]][0] == [t for _, t in report["feature_taps"]][0] == "model_9"


def test_mappings_undo_the_l1_channel_order():
    """After make-supernet{order=l1} the tapped student channels are a permutation of the teacher's; the mappings
    start as that permutation, so the full-width supernet's feature loss is 0 (the identity would not be)."""
    from gcompiler.methods.gc_recipes import init_permuted_mappings

    torch.manual_seed(0)
    teacher = models.create("resnet_9blocks", ngf=4, n_blocks=3).eval()
    x = torch.randn(2, 3, 32, 32)
    sn = gcompiler.compile(teacher, "make-supernet{order=l1}", x)
    assert sn.meta["supernet"]["channel_order"]
    taps = residual_taps(sn)
    pairs = list(zip(taps, taps))
    s_run, t_run = TappedModel(sn, taps), TappedModel(gcompiler.trace(teacher, x), taps)
    loss = SlicedFeatureLoss(pairs, s_run.channels(), t_run.channels())
    with torch.no_grad():
        _, sf = s_run(x)
        _, tf = t_run(x)
        assert float(loss(sf, tf)) > 1e-3  # identity mappings on permuted channels
        init_permuted_mappings(loss, sn.meta["supernet"]["channel_order"])
        assert float(loss(sf, tf)) < 1e-9


def test_search_split_holds_whole_training_images_out_of_training(tmp_path):
    import types

    from gcompiler.data import SampleKey, SingleFolderDataset
    from gcompiler.methods.gan_compression import _search_split_data
    from test_data import _constant_folder, _source_levels

    base = SingleFolderDataset(_constant_folder(tmp_path / "d", 9), crop_size=8, seed=0)
    all_levels = _source_levels(base)
    job = types.SimpleNamespace(dataset=base, settings=types.SimpleNamespace(seed=3, batch_size=2))
    val, note = _search_split_data(job, GANCompressionOptions())
    assert val.num_sources() == 1 and job.dataset.num_sources() == 8  # one in eight
    assert note.startswith("1 of the 9 training images held out") and val.names[0] in note
    train_levels, val_levels = _source_levels(job.dataset), _source_levels(val)
    assert not train_levels & val_levels and train_levels | val_levels == all_levels
    job2 = types.SimpleNamespace(dataset=base, settings=types.SimpleNamespace(seed=3, batch_size=2))
    assert _search_split_data(job2, GANCompressionOptions(search_sources=3))[0].num_sources() == 3
    # the same seed holds out the same image (resume, every torchrun rank)
    job3 = types.SimpleNamespace(dataset=base, settings=types.SimpleNamespace(seed=3, batch_size=2))
    assert _search_split_data(job3, GANCompressionOptions())[0].sources == val.sources
    job4 = types.SimpleNamespace(dataset=base, settings=types.SimpleNamespace(seed=3, batch_size=2))
    val4, note4 = _search_split_data(job4, GANCompressionOptions(search_split="crops"))
    assert val4 is base and job4.dataset is base and "supernet trains on them too" in note4
    with pytest.raises(ConfigError, match="search_sources=9 must leave at least one"):
        _search_split_data(types.SimpleNamespace(dataset=base, settings=job.settings),
                           GANCompressionOptions(search_sources=9))
    big_batch = types.SimpleNamespace(seed=3, batch_size=9)  # 8 images left cannot fill a batch of 9
    job5 = types.SimpleNamespace(dataset=base, settings=big_batch)
    assert _search_split_data(job5, GANCompressionOptions())[0] is base  # auto falls back to crops
    with pytest.raises(ConfigError, match="leaves 8, fewer than --batch-size 9"):
        _search_split_data(types.SimpleNamespace(dataset=base, settings=big_batch),
                           GANCompressionOptions(search_split="sources"))
    one = SingleFolderDataset(_constant_folder(tmp_path / "e", 1), crop_size=8)
    with pytest.raises(ConfigError, match="needs at least 2 training images"):
        _search_split_data(types.SimpleNamespace(dataset=one, settings=job.settings),
                           GANCompressionOptions(search_split="sources"))
