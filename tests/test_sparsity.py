"""Proximal / subgradient L1 steps, the AGP schedule and fine-grained pruner, the masked profile and
prune-by-ratio (numbers checked against hand computation and against the eliminated network)."""
import math

import pytest
import torch
import torch.nn as nn

import gcompiler
from gcompiler.errors import ConfigError, PassError
from gcompiler.passes.sparsity import (FineGrainedPruner, agp_sparsity, proximal_l1,
                                       soft_threshold_, subgradient_l1)


def test_soft_threshold_by_hand():
    p = torch.tensor([0.5, -0.5, 0.05, -0.02, 0.0, 2.0])
    soft_threshold_([p], 0.1)
    assert torch.allclose(p, torch.tensor([0.4, -0.4, 0.0, 0.0, 0.0, 1.9]))


def test_proximal_step_uses_the_current_learning_rate_of_a_cosine_schedule():
    gamma = nn.Parameter(torch.tensor([1.0, 0.3, -0.2]))
    opt = torch.optim.SGD([gamma], lr=0.1, momentum=0.5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    hook, rho = proximal_l1(1.0), 1.0
    for _ in range(3):
        lr = opt.param_groups[0]["lr"]
        before = gamma.detach().clone()
        opt.zero_grad()
        gamma.grad = torch.zeros_like(gamma)  # no loss: only the proximal step moves gamma
        opt.step()
        hook([gamma], lr)
        expect = before.sign() * (before.abs() - rho * lr).clamp_min(0)
        assert torch.allclose(gamma.detach(), expect)
        sched.step()
    assert gamma[2].item() == 0.0  # reached exactly zero
    with pytest.raises(ConfigError, match="rho"):
        proximal_l1(-1.0)


def test_subgradient_adds_sign_and_never_reaches_exact_zero():
    g = nn.Parameter(torch.tensor([0.05, -0.05]))
    opt = torch.optim.SGD([g], lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        g.grad = torch.zeros_like(g)
        subgradient_l1([g], 0.3)
        opt.step()
    assert (g.detach() != 0).all() and g.detach().abs().max() <= 0.03 + 1e-6


def test_agp_schedule_formula():
    assert agp_sparsity(0, 100, 0.9) == pytest.approx(0.05)
    assert agp_sparsity(50, 100, 0.9) == pytest.approx(0.9)
    assert agp_sparsity(99, 100, 0.9) == pytest.approx(0.9)
    mid = 0.9 + (0.05 - 0.9) * (1 - 25 / 50) ** 3
    assert agp_sparsity(25, 100, 0.9) == pytest.approx(mid)
    values = [agp_sparsity(t, 100, 0.9) for t in range(60)]
    assert values == sorted(values)
    with pytest.raises(ConfigError):
        agp_sparsity(0, 100, 1.2)


def test_fine_grained_pruner_keeps_pruned_weights_zero():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    pruner = FineGrainedPruner(model, 0.8, total_steps=20)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 10, 10)
    for t in range(20):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        s = pruner.step(t)
        for w in pruner.weights.values():
            assert float((w == 0).float().mean()) >= s - 1e-6
    assert pruner.sparsity == pytest.approx(0.8)
    # dense MACs do not change: the profile counts the same network
    assert gcompiler.profile(model, x).macs == gcompiler.profile(nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)), x).macs


def _masked_resnet(seed=0):
    torch.manual_seed(seed)
    m = gcompiler.models.create("resnet_9blocks", ngf=16, n_blocks=3)
    x = torch.randn(1, 3, 64, 64)
    gm = gcompiler.compile(m, "insert-masks", x)
    for mk in gcompiler.masks(gm).values():
        with torch.no_grad():
            mk.uniform_(0.1, 1.0)
    return gm, x


def test_prune_by_ratio_halves_every_group_and_estimate_matches_elimination():
    gm, x = _masked_resnet()
    gm = gcompiler.compile(gm, "prune-by-ratio{ratio=0.5}")
    for name, mk in gcompiler.masks(gm).items():
        assert int((mk != 0).sum()) == mk.numel() // 2, name
    est = gcompiler.estimate(gm)
    slim = gcompiler.compile(gm, "eliminate-dead-channels", verify="numeric")
    assert (est.macs, est.params) == (gcompiler.profile(slim).macs, gcompiler.profile(slim).params)
    # analytic: every conv between two halved groups keeps a quarter of its MACs
    assert est.macs < 0.3 * gcompiler.profile(_masked_resnet()[0]).macs


def test_prune_by_ratio_removes_the_smallest_gammas_and_respects_round_to():
    gm, x = _masked_resnet(1)
    mk = gcompiler.masks(gm)
    before = {n: m.detach().clone() for n, m in mk.items()}
    gm = gcompiler.compile(gm, "prune-by-ratio{ratio=0.3,round_to=4}")
    for name, m in gcompiler.masks(gm).items():
        alive = int((m != 0).sum())
        assert alive % 4 == 0 and alive >= 4
        dead_max = before[name][m == 0].abs().max() if (m == 0).any() else -math.inf
        assert dead_max <= before[name][m != 0].abs().min()


def test_prune_to_macs_budget_and_l1_criterion():
    gm, x = _masked_resnet(2)
    dense = gcompiler.profile(gm).macs
    gm = gcompiler.compile(gm, f"prune-by-ratio{{target_macs={dense / 4},criterion=l1,round_to=2}}")
    est = gcompiler.estimate(gm, round_to=2)
    assert est.macs <= dense / 4 and gm.meta["prune_by_ratio"]["estimated_macs"] == est.macs
    slim = gcompiler.compile(gm, "eliminate-dead-channels{round_to=2}")
    assert gcompiler.profile(slim).macs == est.macs  # exact: no retry loop, no slack
    # bisection finds the fewest blocks: one block fewer would not fit
    assert est.macs > dense / 4 * 0.9
    with pytest.raises(PassError, match="cannot reach"):
        gcompiler.compile(_masked_resnet()[0], "prune-by-ratio{target_macs=10}")
    with pytest.raises(PassError, match="matches no masked group"):
        gcompiler.compile(_masked_resnet()[0], "prune-by-ratio{groups=nope*}")


def test_prune_by_ratio_refuses_a_graph_without_masks_and_names_the_pipeline():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    with pytest.raises(PassError, match=r"insert-masks\{groups=all,round_to=1\},prune-by-ratio"):
        gcompiler.compile(m.eval(), "prune-by-ratio{ratio=0.5}", torch.randn(1, 3, 8, 8))
    gm = gcompiler.compile(m.eval(), "insert-masks,prune-by-ratio{ratio=0.5,groups=_0|nope}", torch.randn(1, 3, 8, 8))
    assert int((gcompiler.masks(gm)["_0"] == 0).sum()) == 4
