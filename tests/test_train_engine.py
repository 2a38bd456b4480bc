"""Tests of the distillation engine (gcompiler.train): losses, taps, checkpoints, resume, NaN stop, DDP."""
from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gcompiler
from gcompiler.errors import CheckpointError, ConfigError, DataError
from gcompiler.train import (Cosine, Distill, DistillConfig, FeatureDistillLoss, GANLoss, LinearDecay, Recipe,
                             NonFiniteError, ParamGroup, PerceptualLoss, Phase, TappedModel, TrainConfig, Trainer,
                             adam, build_distance, gram_matrix, latest_checkpoint, list_checkpoints, read_run_checkpoint,
                             make_grid, read_scalars, write_run_checkpoint, save_grid, sgd)
from gcompiler.train import checkpoint as ckpt_mod

import _train_worker as W

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only add contention on the shared 2-core CI machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _final_tensors(run: Path) -> tuple[dict, dict]:
    tensors, state, _ = read_run_checkpoint(latest_checkpoint(run / "checkpoints"))
    return tensors, state


def _assert_same_state(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_state(x, y)
    else:
        assert a == b


# ------------------------------------------------------------------------------------------------
# losses

def test_gan_losses_hand_computed():
    r = torch.tensor([[2.0, 0.0]])
    f = torch.tensor([[-1.0, 1.0]])
    ls = GANLoss("lsgan")
    # D: 0.5 * (mean((r-1)^2) + mean(f^2)) = 0.5 * ((1 + 1)/2 + (1 + 1)/2) = 1
    assert ls.d_loss(r, f).item() == pytest.approx(1.0)
    # G: mean((f-1)^2) = (4 + 0)/2 = 2
    assert ls.g_loss(f).item() == pytest.approx(2.0)
    hinge = GANLoss("hinge")
    # D: mean(relu(1-r)) + mean(relu(1+f)) = (0 + 1)/2 + (0 + 2)/2 = 1.5 ; G: -mean(f) = 0
    assert hinge.d_loss(r, f).item() == pytest.approx(1.5)
    assert hinge.g_loss(f).item() == pytest.approx(0.0)
    van = GANLoss("vanilla")
    sp = lambda x: math.log1p(math.exp(x))  # softplus: BCE(logit, 1) = softplus(-x), BCE(logit, 0) = softplus(x)
    d_expected = 0.5 * ((sp(-2.0) + sp(0.0)) / 2 + (sp(-1.0) + sp(1.0)) / 2)
    assert van.d_loss(r, f).item() == pytest.approx(d_expected, rel=1e-6)
    assert van.g_loss(f).item() == pytest.approx((sp(1.0) + sp(-1.0)) / 2, rel=1e-6)
    # multi-scale discriminators: mean over the score maps
    assert ls.g_loss([f, torch.ones(1, 2)]).item() == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        GANLoss("wgan")


def test_gram_and_perceptual_loss(caplog, tmp_path):
    f = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]]])  # N=1, C=2, H=1, W=2
    # F F^T = [[5, 2], [2, 1]], / (C*H*W = 4)
    assert torch.allclose(gram_matrix(f), torch.tensor([[[1.25, 0.5], [0.5, 0.25]]]))
    vgg = gcompiler.models.create("vgg16_features")
    loss = PerceptualLoss(vgg)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    y = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    same = loss(x, x)
    assert same["content"].item() == 0.0 and same["style"].item() == 0.0
    diff = loss(x, y)
    assert diff["content"].item() > 0 and diff["style"].item() > 0
    # the terms are what the formula says: L1 on relu1_2 and 1e5 x sum of Gram MSEs, images in [0, 1]
    fx, fy = vgg((x + 1) / 2), vgg((y + 1) / 2)
    assert diff["content"].item() == pytest.approx(F.l1_loss(fx["relu1_2"], fy["relu1_2"]).item(), rel=1e-5)
    style = sum(F.mse_loss(gram_matrix(fx[n]), gram_matrix(fy[n])) for n in ("relu1_2", "relu2_2", "relu3_3", "relu4_3"))
    assert diff["style"].item() == pytest.approx(1e5 * style.item(), rel=1e-4)
    xr = x.clone().requires_grad_(True)
    sum(loss(xr, y).values()).backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())
    # VGG weights supplied as a file: the perceptual distance is built on them
    from safetensors.torch import save_file

    wfile = Path(tmp_path) / "vgg16.safetensors"
    save_file({k: v.contiguous() for k, v in vgg.state_dict().items()}, str(wfile))
    built, note = build_distance("perceptual", vgg_weights=wfile)
    assert isinstance(built, PerceptualLoss) and "Gram" in note
    assert built(x, y)["style"].item() == pytest.approx(diff["style"].item(), rel=1e-5)
    with caplog.at_level(logging.WARNING, logger="gcompiler.train"):
        dist, note = build_distance("perceptual")
    assert "no VGG16 weights" in caplog.text and "MSE on pixels" in note
    assert list(dist(x, y)) == ["mse"] and dist(x, y)["mse"].item() == pytest.approx(F.mse_loss(x, y).item())


def test_schedules_values():
    lin = LinearDecay(0.5)
    # total 10, decay starts at s = 5: factor(t) = 1 - max(0, t + 1 - 5) / 6
    assert [lin(t, 10) for t in range(4)] == [1.0] * 4
    assert lin(4, 10) == 1.0
    assert lin(5, 10) == pytest.approx(5 / 6)
    assert lin(9, 10) == pytest.approx(1 / 6)
    cos = Cosine()
    assert cos(0, 10) == pytest.approx(1.0) and cos(5, 10) == pytest.approx(0.5) and cos(10, 10) == pytest.approx(0.0)
    assert Cosine(0.1)(10, 10) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------------
# feature taps

class _Res(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1))
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + self.body(h)
        return self.head(h)


def test_feature_taps_graph_and_hooks():
    torch.manual_seed(0)
    model = _Res()
    x = torch.randn(2, 3, 8, 8)
    gm = gcompiler.trace(model, x)
    add = next(n for n in gm.graph.nodes if n.op == "call_function" and "add" in n.name)
    tapped = TappedModel(gm, ["stem", add.name, "body.1"])
    out, feats = tapped(x)
    with torch.no_grad():
        h = torch.relu(model.stem(x))
        b1 = model.body[1](model.body[0](h))
        res = h + model.body(h)
        ref = model.head(res)
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(out, gm(x))
    assert torch.allclose(feats["stem"], model.stem(x), atol=1e-6)
    assert torch.allclose(feats[add.name], res, atol=1e-6)   # a call_function node: hooks cannot see it
    assert torch.allclose(feats["body.1"], b1, atol=1e-6)
    assert tapped.channels() == {"stem": 6, add.name: 6, "body.1": 6}
    # the tapped view shares the parameters: a feature loss trains the original graph
    feats[add.name].pow(2).mean().backward()
    assert gm.get_submodule("stem").weight.grad is not None
    assert {id(p) for p in tapped.parameters()} == {id(p) for p in gm.parameters()}

    hooked = TappedModel(model, ["stem", "body.2"])
    out2, feats2 = hooked(x)
    assert torch.allclose(out2, ref, atol=1e-6) and torch.allclose(feats2["body.2"], model.body(h), atol=1e-6)
    assert hooked.channels(x) == {"stem": 6, "body.2": 6}
    hooked.remove()
    with pytest.raises(ConfigError, match="available nodes"):
        TappedModel(gm, ["nope"])
    with pytest.raises(ConfigError, match="not a submodule"):
        TappedModel(model, ["relu_99"])


def test_feature_distill_loss_mapping():
    s = {"a": torch.randn(2, 4, 5, 5)}
    t = {"b": torch.randn(2, 4, 5, 5)}
    same = FeatureDistillLoss([("a", "b")], {"a": 4}, {"b": 4})
    # identity initialisation for equal widths: the loss is the plain MSE
    assert same(s, t).item() == pytest.approx(F.mse_loss(s["a"], t["b"]).item(), rel=1e-6)
    wide = FeatureDistillLoss([("a", "b")], {"a": 4}, {"b": 7})
    conv = next(iter(wide.maps.values()))
    t7 = {"b": torch.randn(2, 7, 5, 5)}
    assert conv.weight.shape == (7, 4, 1, 1)
    assert wide(s, t7).item() == pytest.approx(F.mse_loss(conv(s["a"]), t7["b"]).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="spatial"):
        wide(s, {"b": torch.randn(2, 7, 3, 3)})


# ------------------------------------------------------------------------------------------------
# training

def test_loss_falls_on_tiny_distillation(tmp_path):
    teacher, student = W.models()
    g = torch.Generator().manual_seed(5)
    x_eval = torch.rand(8, 3, W.CROP, W.CROP, generator=g) * 2 - 1

    def l1():
        with torch.no_grad():
            return F.l1_loss(student(x_eval), teacher(x_eval)).item()

    before = l1()
    from gcompiler.data.loader import make_loader

    trainer = Trainer(Distill(DistillConfig(pixel="l1", lr=1e-2, schedule="constant")), student=student,
                      teacher=teacher, data=make_loader(W.RandomImages(), batch_size=4, num_workers=0),
                      config=TrainConfig(out_dir=tmp_path, max_steps=40, save_every=0, log_every=10,
                                         progress=False, tensorboard=True, sample_every=20))
    res = trainer.fit()
    after = l1()
    assert res.steps == 40 and after < 0.6 * before, (before, after)
    rows = read_scalars(tmp_path / "scalars.csv")
    pix = [v for s, tag, v in rows if tag == "loss/G/pixel"]
    assert pix[-1] < pix[0]
    assert {"lr/weights", "time/step_s"} <= {tag for _, tag, _ in rows}
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    assert (tmp_path / "samples" / "step_00000040.png").is_file()
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [40]


@pytest.mark.parametrize("loader_kind", ["resumable", "torch"])
def test_resume_equals_uninterrupted(tmp_path, loader_kind):
    def loader():
        if loader_kind == "torch":  # a plain DataLoader: shuffled by torch's RNG, resumed by skipping
            return torch.utils.data.DataLoader(W.RandomImages(), batch_size=4, shuffle=True, drop_last=True)
        return None

    full = W.build(str(tmp_path / "a"), 7, save_every=3, loader=loader())
    full.fit()

    class Crash(RuntimeError):
        pass

    def crash(tr, ctx):
        if tr.step == 5:
            raise Crash("simulated crash after step 5")

    with pytest.raises(Crash):
        W.build(str(tmp_path / "b"), 7, save_every=3, loader=loader(), callbacks=[crash]).fit()
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_00000003"
    resumed = W.build(str(tmp_path / "b"), 7, save_every=3, loader=loader(), resume=True)
    assert resumed.step == 3
    res = resumed.fit()
    assert res.steps == 7
    ta, sa = _final_tensors(tmp_path / "a")
    tb, sb = _final_tensors(tmp_path / "b")
    assert set(ta) == set(tb) and any(k.startswith("disc.") for k in ta) and any(k.startswith("feature_maps.") for k in ta)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    _assert_same_state(sa["optimizers"], sb["optimizers"])
    _assert_same_state(sa["ranks"][0]["data"], sb["ranks"][0]["data"])
    # the resumed run's log continues without duplicated steps
    steps = [s for s, tag, _ in read_scalars(tmp_path / "b" / "scalars.csv") if tag == "loss/G/total"]
    assert steps == list(range(1, 8))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def poison(tr, ctx):
        if tr.step == 5:
            with torch.no_grad():
                tr.module("student").get_submodule("0").weight.fill_(float("nan"))

    trainer = W.build(str(tmp_path), 10, save_every=2, callbacks=[poison])
    with pytest.raises(NonFiniteError, match=r"'G/pixel' = nan.* at step 6 ") as ei:
        trainer.fit()
    assert ei.value.step == 6 and ei.value.phase == "G"
    assert "step_00000004" in str(ei.value)
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    tensors, state, _ = read_run_checkpoint(ei.value.checkpoint)
    assert state["step"] == 4 and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert "non-finite" in (tmp_path / "train.log").read_text()


def test_nonfinite_weights_are_never_checkpointed(tmp_path):
    class Poisoned(Distill):
        def after_step(self, trainer, ctx):
            if trainer.step == 4:
                with torch.no_grad():
                    trainer.module("student").get_submodule("2").bias[0] = float("inf")

    teacher, student = W.models()
    from gcompiler.data.loader import make_loader

    trainer = Trainer(Poisoned(DistillConfig()), student=student, teacher=teacher,
                      data=make_loader(W.RandomImages(), batch_size=4, num_workers=0),
                      config=TrainConfig(out_dir=tmp_path, max_steps=8, save_every=2, progress=False))
    with pytest.raises(NonFiniteError, match=r"student\.2\.bias holds NaN/inf after step 4"):
        trainer.fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    d = tmp_path / "ck"
    good = write_run_checkpoint(d, 2, {"w": torch.arange(4.0)}, {"step": 2})
    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # writes half a file, then the "disk" fails
        Path(f).write_bytes(b"\x80\x02partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(CheckpointError, match="step_00000004.*untouched"):
        write_run_checkpoint(d, 4, {"w": torch.arange(4.0) + 1}, {"step": 4})
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert latest_checkpoint(d) == good and sorted(p.name for p in d.iterdir()) == ["step_00000002"]
    tensors, state, meta = read_run_checkpoint(good)
    assert torch.equal(tensors["w"], torch.arange(4.0)) and state["step"] == 2 and meta["step"] == 2
    # a save killed mid-write (kill -9) leaves only a hidden temp dir: ignored, and cleaned by the next save
    stale = d / ".tmp-step_00000006-999-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"garbage")
    assert latest_checkpoint(d) == good
    for step in (6, 8, 10, 12):
        write_run_checkpoint(d, step, {"w": torch.full((2,), float(step))}, {"step": step}, keep_last=3)
    assert not stale.exists()
    assert [s for s, _ in list_checkpoints(d)] == [8, 10, 12]
    with pytest.raises(CheckpointError, match="incomplete|missing"):
        read_run_checkpoint(stale.parent / "nothing_here")


def test_kill9_then_resume_reaches_final_step(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "tests" / "_train_worker.py"), "--out", str(out), "--steps", "14",
           "--save-every", "2", "--sleep", "0.2"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            ck = list_checkpoints(out / "checkpoints")
            if ck and ck[-1][0] >= 4:
                break
            if proc.poll() is not None:
                pytest.fail(f"worker ended early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint appeared in time")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = list_checkpoints(out / "checkpoints")[-1][0]
    assert 4 <= killed_at < 14
    done = subprocess.run(cmd[:-2] + ["--resume"], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"steps": 14' in done.stdout
    assert list_checkpoints(out / "checkpoints")[-1][0] == 14
    assert f"resumed from" in (out / "train.log").read_text()
    steps = [s for s, tag, _ in read_scalars(out / "scalars.csv") if tag == "loss/G/total"]
    assert steps == sorted(set(steps)) and steps[-1] == 14


def test_ddp_two_processes_match_single_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    steps = 3
    # single process, batch 4 == two processes with batch 2 each (gradients averaged by DDP)
    trainer = W.build(str(single), steps, batch=4)
    trainer.fit()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "_train_worker.py"), "--out", str(ddp), "--steps", str(steps), "--batch", "2"]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert '"rank": 1' in run.stdout and '"rank": 0' in run.stdout
    ta, _ = _final_tensors(single)
    tb, sb = _final_tensors(ddp)
    assert set(ta) == set(tb)
    for k in ta:
        assert torch.allclose(ta[k], tb[k], atol=2e-6, rtol=1e-5), (k, (ta[k] - tb[k]).abs().max())
    assert len(sb["ranks"]) == 2 and sb["world_size"] == 2
    assert sb["ranks"][0]["data"]["train"]["native"]["index"] == sb["ranks"][1]["data"]["train"]["native"]["index"]
    # only rank 0 logs and checkpoints
    assert sorted(p.name for p in ddp.iterdir()) == ["checkpoints", "scalars.csv", "train.log"]
    assert [s for s, _ in list_checkpoints(ddp / "checkpoints")] == [2, 3]


# ------------------------------------------------------------------------------------------------
# engine plumbing

class _TwoGroups(Recipe):
    """A hand-written method: weights with Adam, a learnable gain with SGD + a proximal L1 step."""

    name = "two-groups"

    def setup(self, trainer):
        self.gain = nn.Parameter(torch.ones(3))
        holder = nn.Module()
        holder.gain = self.gain
        trainer.register_module("gain", holder)
        self.seen_lrs = []

    def param_groups(self, trainer):
        def prox(params, lr):
            self.seen_lrs.append(lr)
            for p in params:
                p.copy_(p.sign() * (p.abs() - 0.5 * lr).clamp_min(0))

        return [ParamGroup("weights", list(trainer.module("student").parameters()), adam(1e-3), "linear_decay:0.5"),
                ParamGroup("gain", [self.gain], sgd(0.1, momentum=0.5), Cosine(), post_step=prox)]

    def phases(self, trainer):
        def loss(ctx):
            x = ctx.batch()["input"]
            y = ctx.trainer.net("student")(x) * ctx.trainer.module("gain").gain.view(1, 3, 1, 1)
            return {"l1": F.l1_loss(y, ctx.teacher(x))}

        return [Phase("main", ["weights", "gain"], loss)]

    def progress(self, trainer):
        return {"sparsity": float((self.gain == 0).float().mean())}


def test_param_groups_schedules_and_proximal_hook(tmp_path):
    teacher, student = W.models()
    from gcompiler.data.loader import make_loader

    method = _TwoGroups()
    trainer = Trainer(method, student=student, teacher=teacher, data=make_loader(W.RandomImages(), batch_size=4,
                                                                                 num_workers=0),
                      config=TrainConfig(out_dir=tmp_path, max_steps=8, save_every=0, log_every=1, progress=False))
    trainer.fit()
    # the proximal hook saw the cosine-scheduled SGD learning rate of each step
    assert method.seen_lrs == pytest.approx([0.1 * Cosine()(t, 8) for t in range(8)])
    rows = read_scalars(tmp_path / "scalars.csv")
    lr_w = [v for s, tag, v in rows if tag == "lr/weights"]
    assert lr_w == pytest.approx([1e-3 * LinearDecay(0.5)(t, 8) for t in range(8)])
    assert [tag for _, tag, _ in rows if tag.startswith("stats/")][0] == "stats/sparsity"


def test_bad_configurations_are_reported(tmp_path):
    teacher, student = W.models()
    from gcompiler.data.loader import make_loader

    data = make_loader(W.RandomImages(), batch_size=4, num_workers=0)
    cfg = TrainConfig(out_dir=tmp_path, max_steps=2, progress=False)

    class Dup(_TwoGroups):
        def param_groups(self, trainer):
            ps = list(trainer.module("student").parameters())
            return [ParamGroup("a", ps, adam(1e-3)), ParamGroup("b", ps[:1], adam(1e-3))]

    with pytest.raises(ConfigError, match="groups 'a' and 'b'"):
        Trainer(Dup(), student=student, teacher=teacher, data=data, config=cfg)

    class Orphan(_TwoGroups):
        def phases(self, trainer):
            return [Phase("main", ["weights"], lambda ctx: {})]

    with pytest.raises(ConfigError, match=r"\['gain'\] are stepped by no phase"):
        Trainer(Orphan(), student=student, teacher=teacher, data=data, config=cfg)
    wrong_teacher = nn.Upsample(scale_factor=2)
    with pytest.raises(DataError, match="differ in shape"):
        Trainer(Distill(), student=student, teacher=wrong_teacher, data=data, config=cfg).fit()
    with pytest.raises(ConfigError, match="fp16"):
        Trainer(Distill(), student=student, teacher=teacher, data=data,
                config=TrainConfig(out_dir=tmp_path, max_steps=2, amp="fp16", device="cpu"))
    with pytest.raises(ConfigError, match="max_steps"):
        Trainer(Distill(), student=student, teacher=teacher, data=data, config=TrainConfig(out_dir=tmp_path, max_steps=0))


def test_bf16_autocast_step_on_cpu(tmp_path):
    teacher, student = W.models()
    from gcompiler.data.loader import make_loader

    trainer = Trainer(Distill(DistillConfig(gan="hinge", discriminator=W.method().cfg.discriminator)),
                      student=student, teacher=teacher, data=make_loader(W.RandomImages(), batch_size=4, num_workers=0),
                      config=TrainConfig(out_dir=tmp_path, max_steps=2, save_every=0, amp="bf16", progress=False))
    assert trainer.amp_dtype == torch.bfloat16
    res = trainer.fit()
    assert res.steps == 2 and all(math.isfinite(v) for v in res.losses.values())
    assert all(p.dtype == torch.float32 for p in student.parameters())


def test_sample_grid_resizes_sr_inputs(tmp_path):
    lr_in = torch.full((2, 3, 4, 4), -1.0)
    lr_in[:, :, 0, 0] = 1.0
    out = torch.zeros(2, 3, 8, 8)
    grid = make_grid([lr_in, out, out], (-1.0, 1.0), pad=2)
    assert tuple(grid.shape) == (2 * 8 + 3 * 2, 3 * 8 + 4 * 2, 3)
    # nearest x2 upscaling: the bright corner pixel becomes a 2x2 block, the rest stays black
    assert grid[2:4, 2:4].min() == 255 and grid[2:10, 4:10].max() == 0 and grid[4:10, 2:4].max() == 0
    assert grid[2, 12].tolist() == [128, 128, 128]  # 0 in [-1, 1] -> mid gray
    gray = make_grid([torch.zeros(1, 1, 8, 8)], (-1.0, 1.0))
    assert tuple(gray.shape) == (12, 12, 3)
    path = save_grid([lr_in, out], tmp_path / "g.png")
    from PIL import Image

    assert Image.open(path).size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)


def test_distill_extra_groups_train_masks_with_a_proximal_step(tmp_path):
    """The GS pattern: masks in their own SGD group (cosine) whose proximal L1 step zeroes channels."""
    from gcompiler.data.loader import make_loader
    from gcompiler.passes.masks import ChannelMask

    teacher, student = W.models()
    student = gcompiler.compile(student, "insert-masks", torch.zeros(1, 3, W.CROP, W.CROP))
    scales = [m.scale for m in student.modules() if isinstance(m, ChannelMask)]
    assert scales

    class Slim(Distill):
        name = "slim"

        def extra_groups(self, trainer):
            def prox(params, lr):
                for p in params:
                    p.copy_(p.sign() * (p.abs() - 4.0 * lr).clamp_min(0))

            return [ParamGroup("masks", scales, sgd(0.1, momentum=0.5), Cosine(), post_step=prox)]

        def progress(self, trainer):
            z = torch.cat([s.detach().flatten() for s in scales])
            return {"sparsity": float((z == 0).float().mean())}

    trainer = Trainer(Slim(DistillConfig(lr=1e-3)), student=student, teacher=teacher,
                      data=make_loader(W.RandomImages(), batch_size=4, num_workers=0),
                      config=TrainConfig(out_dir=tmp_path, max_steps=6, save_every=0, log_every=3, progress=False))
    mask_ids = {id(p) for p in scales}
    assert {id(p) for p in trainer.groups["masks"].params} == mask_ids
    assert not mask_ids & {id(p) for p in trainer.groups["weights"].params}
    assert [ph.groups for ph in trainer.phases] == [["weights", "masks"]]
    res = trainer.fit()
    # soft-thresholding by 4 * lr per step (4 x the sum of the cosine lrs = 1.4 > 1 = initial |scale|): exact zeros
    assert res.stats["sparsity"] > 0 and any((s == 0).any() for s in scales)
    assert [v for _, tag, v in read_scalars(tmp_path / "scalars.csv") if tag == "stats/sparsity"][-1] > 0


def test_phases_on_two_data_sources_keep_their_own_positions(tmp_path):
    """The AGD pattern: weights on one data source every step, architecture on another every 2nd step."""
    from gcompiler.data.loader import make_loader

    teacher, student = W.models()
    alpha = nn.Parameter(torch.zeros(1))

    class TwoSources(Recipe):
        name = "two-sources"

        def setup(self, trainer):
            holder = nn.Module()
            holder.alpha = alpha
            trainer.register_module("arch", holder)

        def param_groups(self, trainer):
            return [ParamGroup("weights", list(trainer.module("student").parameters()), adam(1e-3)),
                    ParamGroup("arch", [alpha], adam(1e-2))]

        def phases(self, trainer):
            def loss(ctx):
                x = ctx.batch()["input"]  # the running phase's data source
                out = ctx.trainer.net("student")(x) * (1 + ctx.trainer.module("arch").alpha)
                return {"l1": F.l1_loss(out, ctx.teacher(x))}

            return [Phase("w", ["weights"], loss), Phase("a", ["arch"], loss, every=2, data="arch")]

    data = {"train": make_loader(W.RandomImages(), batch_size=2, num_workers=0, seed=1),
            "arch": make_loader(W.RandomImages(n=8, seed=3), batch_size=2, num_workers=0, seed=2)}
    trainer = Trainer(TwoSources(), student=student, teacher=teacher, data=data,
                      config=TrainConfig(out_dir=tmp_path, max_steps=6, save_every=6, progress=False))
    trainer.fit()
    _, state = _final_tensors(tmp_path)
    pos = state["ranks"][0]["data"]
    assert pos["train"]["native"]["index"] == 12          # 6 batches of 2 of the 16-image epoch
    assert (pos["arch"]["native"]["epoch"], pos["arch"]["native"]["index"]) == (0, 6)  # 3 batches of 2
    assert float(alpha.detach()) != 0.0


def test_scalar_logger_without_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    from gcompiler.train import ScalarLogger

    sl = ScalarLogger(tmp_path, tensorboard=None)
    assert not sl.tensorboard_enabled and "scalars.csv only" in sl.note
    sl.log(1, {"loss/a": 0.5})
    sl.log(2, {"loss/a": 0.25})
    sl.close()
    # a resumed run at step 1 drops the rows the interrupted run wrote after it
    sl2 = ScalarLogger(tmp_path, tensorboard=False, resume_step=1)
    sl2.log(2, {"loss/a": 0.125})
    sl2.close()
    assert read_scalars(tmp_path / "scalars.csv") == [(1, "loss/a", 0.5), (2, "loss/a", 0.125)]
    assert not (tmp_path / "tb").exists()
