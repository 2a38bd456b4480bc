"""Self-supervised GAN compression: the loss by hand, the AGP schedules, channel elimination, sparse export,
and short end-to-end runs through ``gcompiler.compress``."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import gcompiler
from gcompiler.errors import CheckpointError, ConfigError
from gcompiler.methods import get_method
from gcompiler.methods.self_supervised import SelfSupervisedLoss, SelfSupervisedOptions, normalized_difference
from gcompiler.passes.sparsity import FineGrainedPruner, agp_sparsity
from gcompiler.sparse import decode, encode, encoded_bytes, load_sparse, save_sparse


class FirstChannel(nn.Module):
    """A toy discriminator whose score map is the first channel of the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


def test_loss_matches_hand_computed_values():
    x = torch.zeros(1, 3, 4, 4)
    yo = torch.full((1, 3, 4, 4), 0.5)
    yc = torch.full((1, 3, 4, 4), 0.25, requires_grad=True)
    real = torch.ones(1, 3, 4, 4)
    loss = SelfSupervisedLoss(FirstChannel(), gan="lsgan", lam=0.5, alpha=2.0)
    t = loss.terms(x, yo, yc, real)
    # LSGAN generator loss mean((f-1)^2): teacher 0.25, student 0.5625 -> |0.25 - 0.5625| / 0.25
    assert float(t["gc_adv"].detach()) == pytest.approx(1.25)
    # L1 to the real image: teacher 0.5, student 0.75 -> 0.5, times alpha 2
    assert float(t["gc_rec"].detach()) == pytest.approx(1.0)
    # LSGAN D loss 0.5 (mean((r-1)^2) + mean(f^2)): teacher 0.125, student 0.03125 -> 0.75, times lambda 0.5
    assert float(t["dc"].detach()) == pytest.approx(0.375)
    sum(t.values()).backward()
    assert yc.grad is not None and yc.grad.abs().sum() > 0


def test_loss_without_real_images_uses_the_teacher_output_and_is_zero_at_the_teacher():
    x = torch.zeros(1, 3, 4, 4)
    yo = torch.rand(1, 3, 4, 4)
    loss = SelfSupervisedLoss(FirstChannel(), lam=0.5)
    t = loss.terms(x, yo, yo.clone(), None)
    assert set(t) == {"gc_adv", "dc"}
    assert all(float(v) == 0.0 for v in t.values())


def test_normalized_difference_detaches_the_teacher():
    lo = torch.tensor(2.0, requires_grad=True)
    lc = torch.tensor(3.0, requires_grad=True)
    d = normalized_difference(lo, lc)
    d.backward()
    assert float(d.detach()) == pytest.approx(0.5) and lo.grad is None and float(lc.grad) == pytest.approx(0.5)


def test_conditional_discriminator_is_detected_and_a_foreign_one_refused():
    d = nn.Conv2d(6, 1, 3, padding=1)
    loss = SelfSupervisedLoss(d)
    x, y = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    loss.terms(x, y, y, None)
    assert loss.conditional is True
    with pytest.raises(ConfigError, match="not this generator's discriminator"):
        SelfSupervisedLoss(nn.Conv2d(5, 1, 3)).terms(x, y, y, None)


def test_agp_reaches_the_exact_target_sparsity_at_the_scheduled_step():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 1), nn.ConvTranspose2d(8, 3, 2, 2))
    total, final = 40, 0.75
    pruner = FineGrainedPruner(net, final, total, initial=0.05, end_fraction=0.5)
    reached = None
    for t in range(total):
        pruner.step(t)
        if agp_sparsity(t, total, final, end_fraction=0.5) == final and reached is None:
            reached = t
        with torch.no_grad():  # an optimizer step that would revive pruned weights
            for p in net.parameters():
                p.add_(0.01)
    assert reached == 20
    pruner.apply()
    for name, w in pruner.weights.items():
        zero = int((w == 0).sum())
        assert zero == pytest.approx(final * w.numel(), abs=1), name


def test_sparse_encoding_round_trips_exactly_and_its_size_is_the_payload(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(32, 16, 3, 3)
    w[torch.rand_like(w) < 0.8] = 0
    sd = {"conv.weight": w, "conv.bias": torch.randn(32), "count": torch.tensor([3])}
    enc = encode(sd)
    assert "conv.weight" not in enc and "conv.bias" in enc  # the bias is dense: encoding would not pay
    nnz = int((w != 0).sum())
    assert encoded_bytes(enc) == (w.numel() + 7) // 8 + nnz * 4 + 8 * 4 + 32 * 4 + 8
    dec = decode(enc)
    assert all(torch.equal(dec[k], sd[k]) and dec[k].dtype == sd[k].dtype for k in sd)
    n = save_sparse(sd, tmp_path / "s.safetensors")
    assert n == encoded_bytes(enc)
    back = load_sparse(tmp_path / "s.safetensors")
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    bad = dict(enc)
    bad["conv.weight.__sparse_values"] = enc["conv.weight.__sparse_values"][:-1]
    with pytest.raises(CheckpointError, match="conv.weight"):
        decode(bad)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="junk"):
        load_sparse(tmp_path / "junk.safetensors")


def test_options_are_declared_and_validated():
    info = get_method("self-supervised")
    assert info.make_options({"granularity": "channel", "sparsity": "0.75"}).sparsity == 0.75
    with pytest.raises(ConfigError, match="sparsity"):
        info.make_options({"sparsity": "1.5"})
    with pytest.raises(ConfigError, match="granularity"):
        info.make_options({"granularity": "filter"})
    assert SelfSupervisedOptions().lam == 0.5


def _run(tmp_path, name, **kw):
    kw.setdefault("finetune_steps", 2)
    kw.setdefault("d0", "train")
    kw.setdefault("d0_steps", 2)
    return gcompiler.compress("builtin:sr", "builtin:sr", "self-supervised", steps=kw.pop("steps", 6),
                              out=tmp_path / name, batch_size=2, quiet=True, eval_images=2, **kw)


def test_weight_granularity_end_to_end_on_the_builtin_task(tmp_path):
    res = _run(tmp_path, "w", sparsity=0.75, agp_end=0.5)
    s = res.summary
    rep = json.loads((res.run_dir / "report.json").read_text())
    assert s["macs_after"] == s["macs_before"]  # fine-grained sparsity leaves the dense MACs unchanged
    assert rep["sparsity"]["measured_zero_fraction"] >= 0.75 - 1e-3
    payload = rep["sparse_export"]["payload_bytes"]
    assert s["size_bytes_after"] == payload < 0.5 * s["size_bytes_before"]
    dense = load_sparse(res.run_dir / "sparse.safetensors")
    student = gcompiler.load(res.run_dir)
    assert all(torch.equal(dense[k], v) for k, v in student.state_dict().items())


def test_channel_granularity_eliminates_to_a_smaller_exact_graph(tmp_path):
    res = _run(tmp_path, "c", granularity="channel", sparsity=0.5, agp_end=0.5, finetune_steps=0)
    s = res.summary
    assert s["macs_after"] < 0.5 * s["macs_before"] and s["params_after"] < s["params_before"]
    rep = json.loads((res.run_dir / "report.json").read_text())
    passes = [r["pass"] for r in rep["pass_log"]]
    assert "insert-masks" in passes and "prune-by-ratio" in passes and passes[-1] == "eliminate-dead-channels"
    elim = [r for r in rep["pass_log"] if r["pass"] == "eliminate-dead-channels"][0]
    assert elim["error"] is None or elim["error"] < 1e-4  # the verifier compared it with its masked self


def test_channel_granularity_reaches_a_macs_target(tmp_path):
    res = _run(tmp_path, "t", granularity="channel", target_macs="3x", finetune_steps=0)
    assert res.summary["macs_after"] <= res.summary["macs_before"] / 3


def test_refusals_name_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="granularity=channel"):
        _run(tmp_path, "a", target_macs="2x")
    with pytest.raises(ConfigError, match="--bits"):
        _run(tmp_path, "b", bits=8)
