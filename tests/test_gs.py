"""GAN Slimming pieces: proximal step, GS quantization, frozen norms, budget pruning, slimming, training groups.

The graph stages run through a real :class:`CompressJob` (``_job``), so every rewrite is verified by the pass
manager and logged in ``job.pass_log``.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gcompiler.errors import ConfigError
from gcompiler.methods import get_method
from gcompiler.cost import estimate
from gcompiler.methods.base import CompressJob, Settings
from gcompiler.methods.gs import (FrozenNormStats, GSOptions, GSTraining, auto_rho, mask_sparsity, search_student,
                                  slim_student)
from gcompiler.passes.sparsity import proximal_l1
from gcompiler.quant.insert import nonnegative_input
from gcompiler.models import create
from gcompiler.passes.masks import ChannelMask, masks
from gcompiler.profiler import profile
from gcompiler.quant.qmodules import QConv2d
from gcompiler.train import DistillConfig, PixelDistance, TrainConfig, Trainer
from gcompiler.train.schedules import Cosine
from gsfix.teachers import TinyGen


def _randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def _sr_teacher() -> nn.Module:
    torch.manual_seed(0)
    t = _randomize_norms(create("srresnet", nf=8, nb=2, scale=2))
    for p in t.parameters():
        p.requires_grad_(False)
    return t


class _Data:
    value_range = (-1.0, 1.0)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"input": torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(i)) * 2 - 1}


def _job(teacher: nn.Module, ref: torch.Tensor) -> CompressJob:
    """A compression job around ``teacher`` whose reference input is ``ref`` (no run directory is written)."""
    from pathlib import Path

    run_dir = Path("/nonexistent-gs-test-run")
    return CompressJob(Settings(teacher="test", data="test", out=str(run_dir)), run_dir, teacher.eval(), {}, _Data(),
                       ref)


def build_search_student(teacher: nn.Module, ref: torch.Tensor, *, bits: int, opts: GSOptions,
                         calib: list | None = None):
    return search_student(_job(teacher, ref), opts, bits=bits, calib=calib)


def test_proximal_l1_is_soft_thresholding():
    p = nn.Parameter(torch.tensor([0.5, -0.3, 0.05, -0.01, 0.0]))
    proximal_l1(0.1)([p], 0.5)  # threshold rho * lr = 0.05
    assert torch.allclose(p.detach(), torch.tensor([0.45, -0.25, 0.0, 0.0, 0.0]))
    assert (p.detach()[2:] == 0).all()  # exactly zero, so the channels can be eliminated
    with pytest.raises(ConfigError):
        proximal_l1(-1.0)


def test_auto_rho_sets_the_total_shrinkage():
    s = build_search_student(_sr_teacher(), torch.rand(1, 3, 12, 12), bits=32, opts=GSOptions())
    median = float(torch.cat([m.detach().abs() for m in masks(s).values()]).median())
    # cosine factors of a 4-step run: 1, (1 + cos(pi/4))/2, 1/2, (1 + cos(3 pi/4))/2, which sum to 2.5
    rho = auto_rho(s, shrink=1.5, gamma_lr=0.1, steps=4)
    assert rho * 0.1 * 2.5 == pytest.approx(1.5 * median)


def test_search_student_is_the_teacher_with_masks():
    t = _sr_teacher()
    x = torch.rand(2, 3, 12, 12)
    s = build_search_student(t, x[:1], bits=32, opts=GSOptions()).eval()
    assert torch.allclose(s(x), t(x), atol=1e-5)
    groups = s.meta["masks"]["groups"]
    kinds = {e["kind"] for e in groups.values()}
    assert kinds == {"norm", "channel_mask"}  # BN gammas inside the blocks; ChannelMasks on trunk and upsampler
    assert all(p.requires_grad for p in s.parameters())


def test_gs8_quantization_placement():
    x = torch.rand(1, 3, 12, 12) * 2 - 1
    s = build_search_student(TinyGen(), x, bits=8, opts=GSOptions(act_clip=4.0))
    q = [m for m in s.modules() if isinstance(m, QConv2d)]
    assert len(q) == 3 and all(m.weight_quant is not None and m.weight_quant.bits == 8 for m in q)
    assert not any(m.weight_quant.per_channel for m in q)  # symmetric per tensor (GS)
    assert q[0].input_quant is None  # the image input of the first conv stays float
    for m in q[1:]:  # inputs after ReLU: GS's unsigned [0, 4] range
        assert m.input_quant.act_range == "unsigned" and float(m.input_quant.clip) == 4.0 and m.input_quant.bits == 8

    sr = build_search_student(_sr_teacher(), torch.rand(1, 3, 12, 12), bits=8, opts=GSOptions(act_clip=4.0))
    ranges = {c["act_range"] for c in sr.meta["quant_config"].values() if c["act_bits"] is not None}
    assert ranges == {"signed"}  # SRResNet convs read PReLU outputs and residual sums
    srq = build_search_student(_sr_teacher(), torch.rand(1, 3, 12, 12), bits=8,
                               opts=GSOptions(act_range="unsigned", act_clip=4.0))
    assert {m.input_quant.act_range for m in srq.modules() if isinstance(m, QConv2d) and m.input_quant} == {"unsigned"}


def test_calibrated_clips_are_the_float_activation_extremes():
    t = TinyGen().eval()
    calib = [torch.rand(2, 3, 12, 12) * 2 - 1 for _ in range(2)]
    s = build_search_student(t, calib[0][:1], bits=8, opts=GSOptions(clip_percentile=100.0), calib=calib)
    seen = {}
    hooks = [t.body[i].register_forward_hook(lambda m, a, o, i=i: seen.setdefault(i, []).append(a[0]))
             for i in (3, 6)]  # the inputs of the second and third conv
    with torch.no_grad():
        for b in calib:
            t(b)
    for h in hooks:
        h.remove()
    q = [m for m in s.modules() if isinstance(m, QConv2d)]
    for conv, i in zip(q[1:], (3, 6)):  # (the weights stay 8-bit while calibrating, hence the tolerance)
        assert float(conv.input_quant.clip) == pytest.approx(float(torch.cat(seen[i]).max()), rel=1e-2)
    with pytest.raises(ConfigError, match="calibration"):
        build_search_student(t, calib[0][:1], bits=8, opts=GSOptions())


def test_nonnegative_input_rule():
    import gcompiler

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ReflectionPad2d(1), nn.Conv2d(4, 4, 3), nn.PReLU(),
                        nn.Conv2d(4, 3, 1))
    gm = gcompiler.trace(net, torch.rand(1, 3, 8, 8))
    convs = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Conv2d)]
    assert [nonnegative_input(gm, n) for n in convs] == [False, True, False]


def test_straight_through_gradients_reach_weights_and_masks():
    x = torch.rand(2, 3, 12, 12) * 2 - 1
    s = build_search_student(TinyGen(), x[:1], bits=8, opts=GSOptions(), calib=[x])
    FrozenNormStats(s).train()(x).square().mean().backward()
    for name, m in masks(s).items():
        assert m.grad is not None and m.grad.abs().sum() > 0, name
    for mod in s.modules():
        if isinstance(mod, QConv2d):
            assert mod.weight.grad is not None and mod.weight.grad.abs().sum() > 0


def test_frozen_norm_stats_keep_the_teacher_function():
    t = TinyGen().eval()
    x = torch.rand(4, 3, 12, 12) * 2 - 1
    s = build_search_student(t, x[:1], bits=32, opts=GSOptions())
    bns = [m for m in s.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [b.running_mean.clone() for b in bns]
    runner = FrozenNormStats(s).train()
    assert torch.allclose(runner(x), t(x), atol=1e-5)
    assert all(torch.equal(b.running_mean, m) for b, m in zip(bns, before))
    s.train()  # without the wrapper, BatchNorm would normalize with batch statistics
    assert not torch.allclose(s(x), t(x), atol=1e-3)


def _searched(seed: int, ref: torch.Tensor):
    """An SR search student whose masks have distinct magnitudes, as after a search; and its job."""
    job = _job(_sr_teacher(), ref)
    s = search_student(job, GSOptions(), bits=32, calib=None).eval()
    with torch.no_grad():
        for i, m in enumerate(masks(s).values()):
            m.copy_(torch.rand(m.numel(), generator=torch.Generator().manual_seed(seed + i)) + 0.1)
    return job, s


def test_search_student_rewrites_are_verified_and_logged():
    job = _job(TinyGen(), torch.rand(1, 3, 12, 12) * 2 - 1)
    search_student(job, GSOptions(), bits=8, calib=[torch.rand(2, 3, 12, 12) * 2 - 1])
    rows = job.pass_log_rows()
    assert [r["pass"] for r in rows] == ["insert-masks", "insert-fake-quant", "calibrate-activations"]
    assert {r["stage"] for r in rows} == {"search-student"}
    for r in rows:
        assert set(r) >= {"stage", "pass", "options", "seconds", "nodes", "params", "macs", "error", "contract"}
        assert r["macs"][0] == r["macs"][1] > 0  # masks and quantizers do not change the MACs count
    assert rows[0]["options"] == {"round_to": 1} and rows[1]["options"]["weight_bits"] == 8
    assert rows[2]["options"]["data"] == "<list of 1>"  # calibration batches are described, not dumped


def test_budget_pruning_is_exact_and_slimming_keeps_the_masked_function():
    ref = torch.rand(1, 3, 12, 12)
    x = torch.rand(2, 3, 12, 12)
    job, s = _searched(0, ref)
    full = profile(_sr_teacher(), ref).macs
    assert estimate(s).macs == full  # nothing pruned yet
    assert mask_sparsity(s)["zero"] == 0
    slim, rep = slim_student(job, s, target_macs=full // 3, round_to=1)
    pruned = rep["target_pruning"]
    assert pruned["zeroed"] > 0 and pruned["sparsity"]["zero"] == pruned["zeroed"]
    # the exact estimate the pruner used is what elimination built: the budget is met without retries
    assert pruned["estimate"] == pruned["macs"] == profile(slim, ref).macs <= full // 3
    assert not any(isinstance(m, (nn.BatchNorm2d, ChannelMask)) for m in slim.modules())  # folded away
    assert rep["dead_channels"]["removed_units"] > 0
    assert [r["pass"] for r in job.pass_log_rows()][-3:] == ["prune-by-ratio", "eliminate-dead-channels",
                                                            "fold-norms"]
    # slimming without a budget keeps the function of the masked network
    job2, s2 = _searched(5, ref)
    with torch.no_grad():
        for m in masks(s2).values():
            m[: m.numel() // 2] = 0.0
        y_masked = s2(x)
    slim2, rep2 = slim_student(job2, s2, target_macs=None, round_to=1)
    assert torch.allclose(slim2(x), y_masked, atol=1e-4 * float(y_masked.abs().max()))
    assert rep2["estimate_after_search"] == profile(slim2, ref).macs < full


def test_gs_training_groups_schedules_and_proximal_step(tmp_path):
    torch.manual_seed(0)
    x0 = torch.rand(1, 3, 12, 12) * 2 - 1
    student = build_search_student(TinyGen(), x0, bits=8, opts=GSOptions(act_clip=4.0))
    cfg = DistillConfig(pixel=None, distance=PixelDistance("mse"), distance_weight=20.0, gan="lsgan", gan_weight=0.1,
                        discriminator=create("patchgan_d", ndf=4, n_layers=2), lr=1e-3, betas=(0.5, 0.999),
                        schedule="linear_decay:0.5")
    method = GSTraining(cfg, rho=0.05, gamma_lr=0.1, gamma_momentum=0.5)
    data = [{"input": torch.rand(2, 3, 12, 12) * 2 - 1} for _ in range(4)]
    steps = 4
    trainer = Trainer(method, student=student, teacher=TinyGen(), data=data,
                      config=TrainConfig(out_dir=tmp_path, max_steps=steps, save_every=0, progress=False,
                                         device="cpu", tensorboard=False))
    masks_opt = trainer.optimizers["masks"]
    assert isinstance(masks_opt, torch.optim.SGD) and masks_opt.param_groups[0]["momentum"] == 0.5
    assert isinstance(trainer.optimizers["weights"], torch.optim.Adam)
    assert trainer.optimizers["weights"].param_groups[0]["betas"] == (0.5, 0.999)
    assert set(trainer.optimizers) == {"weights", "masks", "disc"}
    assert {id(p) for p in trainer.groups["masks"].params} == {id(p) for p in masks(student).values()}
    seen = []
    hook = trainer.groups["masks"].post_step

    def recording(params, lr):
        before = [p.detach().clone() for p in params]
        hook(params, lr)
        for b, p in zip(before, params):  # soft-thresholding with the learning rate of this step
            assert torch.allclose(p, b.sign() * (b.abs() - 0.05 * lr).clamp_min(0))
        seen.append(lr)

    trainer.groups["masks"].post_step = recording
    trainer.fit()
    assert seen == pytest.approx([0.1 * Cosine()(k, steps) for k in range(steps)])
    assert seen[0] > seen[-1] > 0


def test_huge_rho_kills_every_mask_in_one_step(tmp_path):
    x0 = torch.rand(1, 3, 12, 12) * 2 - 1
    student = build_search_student(TinyGen(), x0, bits=32, opts=GSOptions())
    method = GSTraining(DistillConfig(pixel="mse"), rho=1e4, gamma_lr=0.1, gamma_momentum=0.5)
    trainer = Trainer(method, student=student, teacher=TinyGen(), data=[torch.rand(2, 3, 12, 12)],
                      config=TrainConfig(out_dir=tmp_path, max_steps=1, save_every=0, progress=False, device="cpu",
                                         tensorboard=False))
    trainer.fit()
    assert mask_sparsity(student)["sparsity"] == 1.0
    assert method.progress(trainer)["sparsity"] == 1.0


def test_gs_options_validation_and_registry():
    info = get_method("gs")
    opts = info.make_options({"rho": "0.5", "per_channel": "true", "disc_ndf": "16", "vgg_weights": "none"})
    assert opts.rho == 0.5 and opts.per_channel is True and opts.disc_ndf == 16 and opts.vgg_weights is None
    with pytest.raises(ConfigError, match="no option"):
        info.make_options({"rhoo": 1})
    with pytest.raises(ConfigError, match="one of"):
        info.make_options({"ablation": "quant-only"})
    with pytest.raises(ConfigError):
        info.make_options({"lr": "-1"})
    with pytest.raises(ConfigError, match="unknown --method"):
        get_method("agdd")
    assert "rho" in info.option_help() and GSOptions().rho is None and math.isfinite(GSOptions().shrink)
    assert info.make_options({"rho": "none"}).rho is None
