"""Searching a discrete space under a cost budget: brute force and evolution (GAN Compression's search).

The space is one list of choices per position (:class:`gcompiler.supernet.SearchSpace` or anything
with ``choices``); a candidate is a tuple with one choice per position. Two callables drive a search:

* ``cost(candidate) -> float``: the price (MACs); candidates above ``budget`` are never scored;
* ``score(candidate) -> float``: the quality, **higher is better** (PSNR, SSIM, or minus FID).

:func:`brute_force` scores every candidate within the budget. :func:`evolve` is the evolutionary search
of Fast GAN Compression (``evolution_search.py``): a population of ``population`` random candidates
within the budget; every generation keeps the best ``parent_ratio`` as parents and fills the rest with
mutations (``mutation_ratio`` of the population: each position of a random parent resampled with
probability ``mutate_prob``) and crossovers (each position taken from one of two random parents), every
child resampled until it is within the budget. Scores are cached: a candidate is scored once, and
``max_evals`` bounds the number of distinct candidates scored. :func:`random_search` is the baseline.

Every scored candidate is kept in :attr:`SearchResult.history` (for the Pareto plot).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import Callable, Sequence

from ..errors import ConfigError

Candidate = tuple
__all__ = ["Evaluated", "SearchResult", "Scorer", "brute_force", "evolve", "random_search", "pareto_front",
           "search"]


@dataclasses.dataclass
class Evaluated:
    candidate: tuple
    cost: float
    score: float


@dataclasses.dataclass
class SearchResult:
    """The best candidate within the budget and every scored candidate, in scoring order."""

    best: Evaluated
    history: list[Evaluated]
    method: str
    budget: float | None

    @property
    def evaluations(self) -> int:
        return len(self.history)


class Scorer:
    """Caches ``score`` by candidate, counts distinct evaluations, stops at ``max_evals``."""

    def __init__(self, cost: Callable[[tuple], float], score: Callable[[tuple], float],
                 max_evals: int | None = None) -> None:
        self.cost_fn, self.score_fn, self.max_evals = cost, score, max_evals
        self.costs: dict[tuple, float] = {}
        self.scores: dict[tuple, float] = {}
        self.history: list[Evaluated] = []

    def cost(self, c: tuple) -> float:
        if c not in self.costs:
            self.costs[c] = float(self.cost_fn(c))
        return self.costs[c]

    @property
    def exhausted(self) -> bool:
        return self.max_evals is not None and len(self.history) >= self.max_evals

    def __call__(self, c: tuple) -> float | None:
        if c in self.scores:
            return self.scores[c]
        if self.exhausted:
            return None
        s = float(self.score_fn(c))
        if math.isnan(s):
            s = -math.inf
        self.scores[c] = s
        self.history.append(Evaluated(c, self.cost(c), s))
        return s


def _choices(space) -> list[list]:
    ch = [list(c) for c in getattr(space, "choices", space)]
    if not ch or any(not c for c in ch):
        raise ConfigError("search space: every position needs at least one choice")
    return ch


def _check_budget(choices: list[list], scorer: Scorer, budget: float | None) -> None:
    if budget is None:
        return
    # the cheapest candidate takes the cheapest choice everywhere when the cost is monotone; check it
    smallest = tuple(min(c) for c in choices)
    if scorer.cost(smallest) > budget:
        raise ConfigError(f"the MACs budget {budget:.4g} is below the cheapest sub-network "
                          f"({scorer.cost(smallest):.4g} MACs at the smallest widths): raise --target-macs or "
                          f"offer smaller width choices")


def _best(scorer: Scorer, method: str, budget: float | None) -> SearchResult:
    ok = [e for e in scorer.history if budget is None or e.cost <= budget]
    if not ok:
        raise ConfigError(f"{method} search found no candidate within the budget {budget}")
    best = max(ok, key=lambda e: (e.score, -e.cost))
    return SearchResult(best, list(scorer.history), method, budget)


def brute_force(space, cost: Callable[[tuple], float], score: Callable[[tuple], float], *,
                budget: float | None = None, max_evals: int | None = None) -> SearchResult:
    """Score every candidate within ``budget`` (in the space's order); the best wins."""
    choices = _choices(space)
    scorer = Scorer(cost, score, max_evals)
    _check_budget(choices, scorer, budget)
    for c in itertools.product(*choices):
        if budget is not None and scorer.cost(c) > budget:
            continue
        if scorer(c) is None:
            break
    return _best(scorer, "brute-force", budget)


def _sample(choices: list[list], rng: random.Random, scorer: Scorer, budget: float | None,
            make: Callable[[], tuple], tries: int = 2000) -> tuple | None:
    for _ in range(tries):
        c = make()
        if budget is None or scorer.cost(c) <= budget:
            return c
    return None


def random_search(space, cost: Callable[[tuple], float], score: Callable[[tuple], float], *,
                  budget: float | None = None, evals: int = 100, seed: int = 0) -> SearchResult:
    """Score ``evals`` distinct uniformly random candidates within ``budget`` (the baseline)."""
    choices = _choices(space)
    rng = random.Random(seed)
    scorer = Scorer(cost, score, evals)
    _check_budget(choices, scorer, budget)
    stale = 0
    while not scorer.exhausted and stale < 10000:
        c = _sample(choices, rng, scorer, budget, lambda: tuple(rng.choice(ch) for ch in choices))
        if c is None:
            break
        stale = stale + 1 if c in scorer.scores else 0
        scorer(c)
    return _best(scorer, "random", budget)


def evolve(space, cost: Callable[[tuple], float], score: Callable[[tuple], float], *,
           budget: float | None = None, population: int = 100, generations: int = 500,
           mutate_prob: float = 0.2, mutation_ratio: float = 0.5, parent_ratio: float = 0.25,
           max_evals: int | None = None, seed: int = 0) -> SearchResult:
    """Evolutionary search (see the module docstring); stops after ``generations`` or ``max_evals`` scores."""
    for name, v in (("mutate_prob", mutate_prob), ("mutation_ratio", mutation_ratio), ("parent_ratio", parent_ratio)):
        if not 0 <= v <= 1:
            raise ConfigError(f"evolution: {name} must be in [0, 1], got {v}")
    if population < 2:
        raise ConfigError(f"evolution: population must be >= 2, got {population}")
    choices = _choices(space)
    rng = random.Random(seed)
    scorer = Scorer(cost, score, max_evals)
    _check_budget(choices, scorer, budget)
    n_parents = max(1, int(round(parent_ratio * population)))
    n_mut = int(round(mutation_ratio * population))

    def random_cand() -> tuple:
        return tuple(rng.choice(ch) for ch in choices)

    pop: list[tuple] = []
    for _ in range(population):
        c = _sample(choices, rng, scorer, budget, random_cand)
        if c is None:
            break
        pop.append(c)
    if not pop:
        raise ConfigError(f"evolution: no random candidate within the budget {budget} in 2000 tries")
    for c in pop:
        scorer(c)

    def fitness(c: tuple) -> float:
        s = scorer.scores.get(c)
        return -math.inf if s is None else s

    for _gen in range(generations):
        if scorer.exhausted:
            break
        parents = sorted(set(pop), key=fitness, reverse=True)[:n_parents]

        def mutate() -> tuple:
            p = rng.choice(parents)
            return tuple(rng.choice(ch) if rng.random() < mutate_prob else v for v, ch in zip(p, choices))

        def cross() -> tuple:
            a, b = rng.choice(parents), rng.choice(parents)
            return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))

        children: list[tuple] = []
        for make, n in ((mutate, n_mut), (cross, population - n_parents - n_mut)):
            for _ in range(max(n, 0)):
                c = _sample(choices, rng, scorer, budget, make, tries=200)
                if c is not None:
                    children.append(c)
        for c in children:
            if scorer(c) is None:
                break
        pop = parents + children
    return _best(scorer, "evolution", budget)


def search(space, cost: Callable[[tuple], float], score: Callable[[tuple], float], *, budget: float | None,
           method: str = "auto", brute_force_limit: int = 256, evals: int = 200, population: int = 20,
           mutate_prob: float = 0.2, seed: int = 0) -> SearchResult:
    """Brute force when the space has at most ``brute_force_limit`` candidates (``method="auto"``), else evolution
    with ``evals`` scored candidates at most (``population`` per generation)."""
    choices = _choices(space)
    size = math.prod(len(c) for c in choices)
    if method == "auto":
        method = "brute-force" if size <= brute_force_limit else "evolution"
    if method == "brute-force":
        return brute_force(choices, cost, score, budget=budget)
    if method == "evolution":
        return evolve(choices, cost, score, budget=budget, population=population,
                      generations=max(1, evals), mutate_prob=mutate_prob, max_evals=evals, seed=seed)
    if method == "random":
        return random_search(choices, cost, score, budget=budget, evals=evals, seed=seed)
    raise ConfigError(f"search method must be auto, brute-force, evolution or random, got {method!r}")


def pareto_front(history: Sequence[Evaluated]) -> list[Evaluated]:
    """Candidates not beaten by another on both cost (lower) and score (higher), by increasing cost."""
    front: list[Evaluated] = []
    for e in sorted(history, key=lambda e: (e.cost, -e.score)):
        if not front or e.score > front[-1].score:
            front.append(e)
    return front
