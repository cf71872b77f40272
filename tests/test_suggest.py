"""``bertcls suggest``: each strategy's ranking where the answer is known, ``diverse`` spreading over clusters,
exclusion of labelled, sent and near-copied texts, both tasks, every bad input, and a labelling round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bertcls.suggest.strategies import select
from bertcls.task import DecisionRule, MultiLabel, SingleLabel
from tests.conftest import read_csv, thread_frame

SURE = [0.98, 0.01, 0.01]


def test_each_strategy_ranks_the_ambiguous_texts_first():
    probs = np.array([SURE, [0.4, 0.35, 0.25], SURE[::-1], [0.5, 0.49, 0.01], [0.9, 0.05, 0.05]])
    vectors = np.array([[1.0, 0.0], [1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 1.0]])  # rows 0-2 and 3-4 together
    for strategy in ("uncertainty", "margin", "entropy", "activelab", "diverse"):
        chosen = select(strategy, probs, vectors, 2, SingleLabel(), DecisionRule())
        assert set(chosen.rows.tolist()) == {1, 3}, strategy
    assert select("margin", probs, vectors, 1, SingleLabel(), DecisionRule()).rows.tolist() == [3]  # 0.01 apart
    assert select("uncertainty", probs, vectors, 1, SingleLabel(), DecisionRule()).rows.tolist() == [1]  # top 0.4
    assert select("diverse", probs, vectors, 1, SingleLabel(), DecisionRule()).rows.tolist() == [3]  # by margin


def test_diverse_takes_a_multi_label_texts_least_sure_label():
    rule = DecisionRule(thresholds=(0.5, 0.5, 0.5))
    probs = np.array([[0.5, 0.99, 0.01], [0.4, 0.4, 0.6], [0.99, 0.01, 0.99], [0.97, 0.02, 0.98]])
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    assert select("diverse", probs, vectors, 1, MultiLabel(), rule).rows.tolist() == [0]  # one label at 0.5
    assert select("margin", probs, vectors, 1, MultiLabel(), rule).rows.tolist() == [1]  # the mean closeness


def test_multi_label_uncertainty_is_closeness_to_each_labels_threshold():
    rule = DecisionRule(thresholds=(0.3, 0.7))
    probs = np.array([[0.95, 0.05], [0.31, 0.05], [0.9, 0.69], [0.0, 1.0]])
    chosen = select("uncertainty", probs, np.zeros((4, 2)), 2, MultiLabel(), rule)
    assert chosen.rows.tolist() in ([1, 2], [2, 1])
    assert select("entropy", probs, np.zeros((4, 2)), 1, MultiLabel(), rule).rows.tolist() != [3]


def test_diverse_spreads_over_clusters_where_uncertainty_takes_near_copies():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16)) * 10
    vectors = np.vstack(
        [centres[0] + rng.normal(size=(12, 16)) * 0.01] + [c + rng.normal(size=(6, 16)) for c in centres[1:]]
    )
    cluster = np.array([0] * 12 + [1] * 6 + [2] * 6 + [3] * 6)
    top = np.where(cluster == 0, 0.51, 0.0) + np.where(cluster == 0, 0, rng.uniform(0.55, 0.7, len(cluster)))
    probs = np.column_stack([top, 1 - top])  # the near-copies of cluster 0 are the most uncertain
    plain = select("uncertainty", probs, vectors, 4, SingleLabel(), DecisionRule())
    spread = select("diverse", probs, vectors, 4, SingleLabel(), DecisionRule())
    assert set(cluster[plain.rows]) == {0}
    assert sorted(set(cluster[spread.rows])) == [0, 1, 2, 3]
    assert spread.rows[0] in np.flatnonzero(cluster == 0) and "cluster" in spread.reasons[0]


def pool_frame(trained_model) -> pd.DataFrame:
    """Threads of the same generator that the model was not trained on, without their labels."""
    used = set(read_csv(trained_model / "data" / "train.csv").text)
    used |= set(read_csv(trained_model / "data" / "val.csv").text) | set(
        read_csv(trained_model / "data" / "test.csv").text
    )
    frame = thread_frame()
    return frame[~frame.text.isin(used)].reset_index(drop=True)


def test_cli_leaves_out_labelled_sent_empty_and_near_copies(trained_model, cli, tmp_path):
    unseen = pool_frame(trained_model)
    train = read_csv(trained_model / "data" / "train.csv")
    labelled = [train.text.iloc[0], "  " + train.text.iloc[1].upper()]  # case and spacing do not hide a labelled text
    near_copy = train.text.iloc[2] + " thanks"
    sent = unseen.text.iloc[:5].tolist()
    pool = pd.DataFrame({"text": [*unseen.text, *labelled, near_copy, "", "  "], "ticket": range(len(unseen) + 5)})
    pool.to_csv(tmp_path / "pool.csv", index=False)
    pd.DataFrame({"text": sent}).to_csv(tmp_path / "sent.csv", index=False)
    code, out, err = cli("suggest", "--output-root", trained_model, "--pool-file", tmp_path / "pool.csv",
                         "--exclude-file", tmp_path / "sent.csv", "--n", "10",
                         "--output-file", tmp_path / "next.csv")  # fmt: skip
    assert code == 0, err
    rows = read_csv(tmp_path / "next.csv")
    assert len(rows) == 10 and not set(rows.text) & (set(sent) | set(labelled) | {near_copy, "", "  "})
    assert list(rows.columns[:3]) == ["text", "ticket", "source_row"]
    assert {"model_predicted_label", "model_confidence", "score", "reason", "category"} <= set(rows.columns)
    assert (rows.category == "").all() and rows.score.astype(float).is_monotonic_decreasing
    assert [int(r) - 2 for r in rows.source_row] == rows.ticket.astype(int).tolist()  # CSV lines of the pool
    for label, count in (("already labelled", 2), ("already sent", 5), ("near-copies", 1), ("empty texts", 2)):
        assert any(label in line and line.rstrip(" │").endswith(str(count)) for line in out.splitlines()), out


@pytest.mark.slow
def test_a_labelling_round_trip_trains_without_reshaping(trained_model, cli, tmp_path):
    """Suggestions labelled (the oracle is the generator's label) and appended train a model as they are."""
    unseen = pool_frame(trained_model)
    unseen[["text"]].to_csv(tmp_path / "pool.csv", index=False)
    code, _, err = cli("suggest", "--output-root", trained_model, "--pool-file", tmp_path / "pool.csv", "--n", "20",
                       "--output-file", tmp_path / "next.csv")  # fmt: skip
    assert code == 0, err
    labelled = read_csv(tmp_path / "next.csv")
    labelled["category"] = labelled.text.map(dict(zip(unseen.text, unseen.category, strict=True)))
    first = read_csv(trained_model / "data" / "train.csv")[["text", "category"]].assign(round="0")
    grown = pd.concat([first, labelled.assign(round="1")], ignore_index=True)
    grown.to_csv(tmp_path / "grown.csv", index=False)
    code, _, err = cli("train", "--output-root", tmp_path / "root", "--data-file", tmp_path / "grown.csv", "-v", "1")
    assert code == 0, err
    assert f"by labelling round: 0: {len(first)}, 1: 20" in err.replace("\n", " ")


def test_multi_label_suggestions(ml_model, cli, tmp_path):
    texts = ["I am so happy for you, congratulations!", "What? I don't get it.", "That is awful and sad.", "ok"]
    pd.DataFrame({"text": texts * 3}).assign(text=lambda f: f.text + [f" ({i})" for i in range(12)]).to_csv(
        tmp_path / "pool.csv", index=False
    )
    code, _, err = cli("suggest", "--output-root", ml_model, "--pool-file", tmp_path / "pool.csv", "--n", "3",
                       "--strategy", "uncertainty", "--output-file", tmp_path / "next.csv")  # fmt: skip
    assert code == 0, err
    rows = read_csv(tmp_path / "next.csv")
    assert len(rows) == 3 and "model_predicted_labels" in rows.columns and (rows["labels"] == "").all()
    code, _, err = cli("suggest", "--output-root", ml_model, "--pool-file", tmp_path / "pool.csv", "--strategy",
                       "activelab", "--n", "3")  # fmt: skip
    assert code == 2 and "activelab scores one label per text" in err


@pytest.mark.parametrize(
    ("pool", "args", "message"),
    [
        ("text\n", [], "has no data rows"),
        ("body\nhello\n", [], "has no column 'text'"),
        ("text\nhello\nworld\n", ["--n", "3"], "--n 3 is more than the 2 rows of pool file"),
        ('text\n""\n" "\n', ["--n", "1"], "is empty, already labelled or already sent"),
        ("text\nhello\n", ["--strategy", "clever"], "strategy"),
    ],
)
def test_bad_input_is_one_sentence(trained_model, cli, tmp_path, pool, args, message):
    (tmp_path / "pool.csv").write_text(pool)
    code, _, err = cli("suggest", "--output-root", trained_model, "--pool-file", tmp_path / "pool.csv", *args)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_a_pool_of_labelled_texts_is_one_sentence(trained_model, cli, tmp_path):
    read_csv(trained_model / "data" / "val.csv")[["text"]].to_csv(tmp_path / "pool.csv", index=False)
    code, _, err = cli("suggest", "--output-root", trained_model, "--pool-file", tmp_path / "pool.csv", "--n", "2")
    assert code == 2 and "already labelled" in err
