"""gcompiler.search: budgets, brute force optimum, evolution vs random sampling, Pareto front and plot, FID."""
from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gcompiler.errors import ConfigError
from gcompiler.search.evolution import Evaluated, brute_force, evolve, pareto_front, random_search, search

CHOICES = [[8, 16, 24, 32, 48, 64]] * 8
WEIGHTS = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 2.0, 1.0]


def cost(c: tuple) -> float:  # MACs-like: quadratic in the widths, heavier in the middle positions
    return sum(w * v * v for w, v in zip(WEIGHTS, c))


def make_score(seed: int):
    """A synthetic quality: a concave, unevenly weighted reward per position (more channels help, some positions
    much more than others), plus interactions between neighbours; the best use of a budget is not obvious."""
    rng = random.Random(seed)
    gains = [rng.uniform(0.1, 3.0) for _ in range(8)]

    def score(c: tuple) -> float:
        s = sum(g * math.log(v) for g, v in zip(gains, c))
        return s + 0.3 * sum(math.log(min(a, b)) for a, b in zip(c, c[1:]))
    return score


BUDGET = 0.3 * cost(tuple(max(c) for c in CHOICES))


def test_evolution_respects_the_budget():
    res = evolve(CHOICES, cost, make_score(0), budget=BUDGET, population=16, generations=50, max_evals=150, seed=1)
    assert res.evaluations == 150
    assert all(e.cost <= BUDGET for e in res.history)
    assert res.best.cost <= BUDGET
    assert len({e.candidate for e in res.history}) == res.evaluations  # each candidate scored once


def test_evolution_beats_random_sampling_with_the_same_evaluations():
    evo, rnd = [], []
    for seed in range(6):
        score = make_score(seed)
        evo.append(evolve(CHOICES, cost, score, budget=BUDGET, population=16, generations=100, max_evals=120,
                          seed=seed).best.score)
        rnd.append(random_search(CHOICES, cost, score, budget=BUDGET, evals=120, seed=seed).best.score)
    wins = sum(e > r for e, r in zip(evo, rnd))
    assert wins >= 5, (evo, rnd)
    assert statistics.mean(evo) > statistics.mean(rnd)


def test_brute_force_finds_the_optimum_within_the_budget():
    choices = [[1, 2, 3]] * 4
    score = make_score(3)
    budget = 40.0
    res = brute_force(choices, lambda c: sum(v * v for v in c) * 2, lambda c: score(c + (1,) * 4), budget=budget)
    feasible = [c for c in itertools.product(*choices) if sum(v * v for v in c) * 2 <= budget]
    assert res.evaluations == len(feasible)
    assert res.best.candidate == max(feasible, key=lambda c: score(c + (1,) * 4))


def test_auto_picks_brute_force_for_small_spaces_and_evolution_otherwise():
    small = search([[1, 2]] * 3, sum, lambda c: -sum(c), budget=None, brute_force_limit=8)
    assert small.method == "brute-force" and small.evaluations == 8
    big = search(CHOICES, cost, make_score(1), budget=BUDGET, brute_force_limit=8, evals=40, population=8)
    assert big.method == "evolution" and big.evaluations == 40


def test_budget_below_the_cheapest_candidate_is_a_clear_error():
    with pytest.raises(ConfigError, match="below the cheapest sub-network"):
        evolve(CHOICES, cost, make_score(0), budget=1.0)
    with pytest.raises(ConfigError, match="mutate_prob"):
        evolve(CHOICES, cost, make_score(0), budget=None, mutate_prob=1.5)


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(-10, 10)), min_size=1, max_size=40))
def test_pareto_front_is_not_dominated(points):
    hist = [Evaluated((i,), c, s) for i, (c, s) in enumerate(points)]
    front = pareto_front(hist)
    for f in front:
        assert not any((e.cost <= f.cost and e.score > f.score) or (e.cost < f.cost and e.score >= f.score)
                       for e in hist)
    for e in hist:  # everything else is dominated or equal to a front point
        assert any(f.cost <= e.cost and f.score >= e.score for f in front)


def test_pareto_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from gcompiler.search.plot import pareto_plot

    res = evolve(CHOICES, cost, make_score(0), budget=BUDGET, population=8, generations=5, max_evals=30)
    p = pareto_plot(res.history, res.best, tmp_path / "run" / "pareto.png", budget=BUDGET,
                    baselines={"teacher": (cost(tuple(max(c) for c in CHOICES)), 40.0)})
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


class _RandomFeatures(nn.Module):
    """A randomly initialised stand-in feature extractor ([0, 1] images -> 32 features)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, 2), nn.ReLU(), nn.Conv2d(32, 32, 3, 2), nn.AdaptiveAvgPool2d(1))
        self.num_features = 32

    def forward(self, x):
        return self.net(x.float()).flatten(1)


def test_fid_through_torchmetrics_with_a_random_extractor():
    pytest.importorskip("torchmetrics")
    from gcompiler.search.fid import fid_score

    g = torch.Generator().manual_seed(0)
    real = [torch.rand(16, 3, 32, 32, generator=g) for _ in range(2)]
    same = fid_score(real, real, _RandomFeatures())
    shifted = fid_score([(r * 0.5 + 0.5) for r in real], real, _RandomFeatures())
    assert abs(same) < 1e-3 and shifted > 100 * max(abs(same), 1e-6)
    with pytest.raises(ConfigError, match="at least 2"):
        fid_score([real[0][:1]], real, _RandomFeatures())


def test_fid_inception_with_random_weights():
    try:
        import pytorch_fid  # noqa: F401
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError when it does not match torch
        pytest.skip(f"the fid extra (pytorch-fid + a matching torchvision) is not usable here: {exc}")
    from gcompiler.search.fid import fid_score, load_inception

    feats = load_inception(None)  # randomly initialised FID InceptionV3, nothing downloaded
    x = torch.rand(4, 3, 64, 64)
    assert feats(x).shape == (4, 2048)
    assert abs(fid_score([x], [x], feats)) < 1e-2


def test_load_inception_without_the_extra_is_a_clear_error(monkeypatch):
    import builtins

    from gcompiler.search.fid import load_inception

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("pytorch_fid"):
            raise ImportError("No module named 'pytorch_fid'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError, match=r"gcompiler\[fid\]"):
        load_inception("nowhere.pth")
