"""Population Based Training decisions as pure functions of scores, parameters and a seeded generator."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from optuna.distributions import FloatDistribution, IntDistribution

from bertcls.config.settings import PBTSection, SearchSpace
from bertcls.tuning.search_space import distributions

PERTURBED = ("lr", "weight_decay", "dropout_rate", "warmup_ratio", "linear_l2")


def quantile_size(population: int, fraction: float) -> int:
    """ceil(n * fraction), at least 1 and at most n // 2 (as Ray Tune does)."""
    return max(1, min(population // 2, math.ceil(population * fraction)))


def rank_members(scores: list[float]) -> list[int]:
    """Member indices, best first; ties keep the lower index first."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def explore(
    params: dict[str, float], rng: np.random.Generator, space: SearchSpace, factors: tuple[float, float]
) -> dict[str, float]:
    """Multiply each perturbed parameter by a factor drawn uniformly from ``factors``, clipped to the search bounds."""
    bounds = {**distributions(space), **distributions(space, linear=True)}
    new = dict(params)
    for name in (p for p in PERTURBED if p in params):
        bound = bounds[name]
        assert isinstance(bound, FloatDistribution | IntDistribution)  # every perturbed parameter is numeric
        new[name] = float(np.clip(params[name] * rng.uniform(*factors), bound.low, bound.high))
    return new


@dataclass
class Decision:
    member: int
    action: str  # "exploit" or "explore"
    source: int | None
    params: dict[str, float]
    changes: dict[str, tuple[float, float]] = field(default_factory=dict)


def decide(
    scores: list[float],
    params: list[dict[str, float]],
    has_state: list[bool],
    rng: np.random.Generator,
    cfg: PBTSection,
    space: SearchSpace,
) -> list[Decision]:
    """Members in the bottom quantile exploit a random top member (if it has a saved state) or explore."""
    size = quantile_size(len(scores), cfg.quantile_fraction)
    best_first = rank_members(scores)
    top, bottom = best_first[:size], best_first[-size:]
    decisions = []
    for member in bottom:
        donors = [d for d in top if has_state[d] and d != member]
        exploit = rng.random() < cfg.exploit_probability
        if exploit and donors:
            source = int(donors[rng.integers(len(donors))])
            new = dict(params[source])
            action = "exploit"
        else:
            source = None
            new = explore(params[member], rng, space, cfg.perturb_factors)
            action = "explore"
        changes = {k: (params[member][k], new[k]) for k in PERTURBED if k in new and new[k] != params[member][k]}
        decisions.append(Decision(member, action, source, new, changes))
    return decisions
