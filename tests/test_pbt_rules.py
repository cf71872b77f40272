"""PBT decisions as pure functions on synthetic scores."""

from __future__ import annotations

import numpy as np

from bertcls.config.settings import PBTSection, SearchSpace
from bertcls.tuning.pbt_rules import PERTURBED, decide, explore, quantile_size, rank_members

SPACE = SearchSpace()


def params(i: int) -> dict:
    return {
        "lr": 1e-4 * (i + 1),
        "weight_decay": 1e-5,
        "dropout_rate": 0.3,
        "warmup_ratio": 0.1,
        "batch_size": 16,
        "num_hidden_layers": 2,
        "activation": "gelu",
    }


def test_quantile_size_is_ceil_capped_at_half():
    assert [quantile_size(n, 0.2) for n in (2, 4, 5, 6, 10, 11)] == [1, 1, 1, 2, 2, 3]
    assert quantile_size(4, 0.5) == 2 and quantile_size(3, 0.5) == 1


def test_ranking_best_first_ties_by_index():
    assert rank_members([0.5, 0.9, 0.5, 0.1]) == [1, 0, 2, 3]


def test_explore_stays_in_bounds_and_within_factors():
    rng = np.random.default_rng(0)
    edge = {"lr": SPACE.lr[1], "weight_decay": SPACE.weight_decay[0], "dropout_rate": 0.3, "warmup_ratio": 0.29}
    for _ in range(500):
        new = explore(edge, rng, SPACE, (0.8, 1.2))
        for name in edge:
            low, high = getattr(SPACE, name)
            assert low <= new[name] <= high
        assert 0.8 * 0.3 <= new["dropout_rate"] <= 1.2 * 0.3
    assert set(edge) < set(PERTURBED)
    linear = explore({"linear_l2": SPACE.linear_l2[1]}, rng, SPACE, (0.8, 1.2))  # the linear head's one knob
    assert set(linear) == {"linear_l2"} and SPACE.linear_l2[1] * 0.8 <= linear["linear_l2"] <= SPACE.linear_l2[1]


def test_bottom_member_exploits_a_top_member_with_state():
    cfg = PBTSection(exploit_probability=1.0)
    decisions = decide(
        [0.9, 0.5, 0.7, 0.2], [params(i) for i in range(4)], [True] * 4, np.random.default_rng(0), cfg, SPACE
    )
    assert len(decisions) == 1
    d = decisions[0]
    assert (d.member, d.action, d.source) == (3, "exploit", 0) and d.params == params(0)
    assert d.changes["lr"] == (params(3)["lr"], params(0)["lr"])


def test_member_without_saved_state_is_never_copied():
    cfg = PBTSection(exploit_probability=1.0)
    decisions = decide(
        [0.9, 0.5, 0.7, 0.2],
        [params(i) for i in range(4)],
        [False, True, True, True],
        np.random.default_rng(0),
        cfg,
        SPACE,
    )
    assert decisions[0].action == "explore" and decisions[0].source is None


def test_explore_only_when_probability_zero():
    cfg = PBTSection(exploit_probability=0.0, quantile_fraction=0.5)
    decisions = decide(
        [0.1, 0.2, 0.3, 0.4], [params(i) for i in range(4)], [True] * 4, np.random.default_rng(1), cfg, SPACE
    )
    assert {d.member for d in decisions} == {0, 1} and all(d.action == "explore" for d in decisions)


def test_seeded_decision_sequence_is_stable():
    def sequence(seed: int):
        rng = np.random.default_rng(seed)
        out = []
        scores = [0.5, 0.6, 0.7, 0.8, 0.4, 0.3]
        population = [params(i) for i in range(6)]
        for step in range(5):
            for d in decide(scores, population, [True] * 6, rng, PBTSection(population_size=6), SPACE):
                population[d.member] = d.params
                out.append((step, d.member, d.action, d.source, round(d.params["lr"], 12)))
            scores = scores[1:] + scores[:1]
        return out

    assert sequence(7) == sequence(7)
    assert sequence(7) != sequence(8)
