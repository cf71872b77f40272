"""Simulated labelling with ``bertcls suggest`` (issue 26): does the default strategy reach a good model with fewer
labels than random selection?

For each set (BBC, SMS, the support tickets) the fixed split of ``quality.py``: the 80% is the unlabelled pool (its
true labels are the oracle), the 20% the test set. Start from 5 labelled texts per class; each round trains the
default frozen model on the texts labelled so far (``bertcls train``'s own workflow, in process, one output root per
set so the embedding cache is shared), scores macro F1 on the test set, then adds 20 texts chosen by the strategy
(``suggest``'s own code, with the pool file and the labelled data of the round) or at random, up to ``--budget``
labels (the whole pool for the tickets). Reported per set and strategy, as means over ``--seeds``: the area under the
macro-F1 learning curve (mean F1, in points, over the label counts random selection was scored at) and the labels
needed to reach 97% of the full-data F1 of ``benchmarks/results/quality.json``; plus the seconds of one suggestion
round on a 10,000-text pool. Writes benchmarks/results/active.json and active_curves.png (or ``--result``.json and
``--result``_curves.png).

    python benchmarks/bench_active.py [--sets tickets,bbc,sms] [--strategies diverse,random,margin,uncertainty]
                                      [--seeds 0,1,2] [--budget 500] [--work DIR] [--result active]
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import RESULTS, benchmark_parser, comma_ints, cpu_line, parse_args, save_result
from quality import make_splits

START_PER_CLASS, PER_ROUND = 5, 20


def macro_f1(truth, predicted) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, predicted, average="macro"))


def train_round(root: Path, labelled: pd.DataFrame, seed: int):
    """The default frozen train on the labelled rows; returns the checkpoint."""
    from bertcls.config.sources import resolve_settings
    from bertcls.model.checkpoint import load_named_checkpoint
    from bertcls.training.workflow import run_training

    data = root.parent / "labelled.csv"
    labelled[["text", "category"]].to_csv(data, index=False)
    flags = {"output_root": str(root), "data.data_file": str(data), "verbosity": 0, "model.seed": seed}
    run_training(resolve_settings(flags).settings)
    return load_named_checkpoint(None, root)


def test_f1(ckpt, root: Path, test: pd.DataFrame) -> float:
    from bertcls.inference.scoring import checkpoint_service, score_texts

    trained = ckpt.trained_settings(root)
    service = checkpoint_service(ckpt, trained, __import__("torch").device("cpu"), "auto")
    probs = score_texts(ckpt, test.text.tolist(), service, root, 64)
    return macro_f1(test.category, [ckpt.labels[i] for i in probs.argmax(axis=1)])


def choose(strategy: str, ckpt, root: Path, pool: pd.DataFrame, count: int, seed: int, rng) -> list[int]:
    """Pool positions to label next."""
    if strategy == "random":
        return rng.choice(len(pool), size=min(count, len(pool)), replace=False).tolist()
    from bertcls.config.sources import resolve_settings
    from bertcls.suggest.run import SuggestRequest, suggest

    path = root.parent / "pool.csv"
    pool.assign(position=np.arange(len(pool)))[["text", "position"]].to_csv(path, index=False)
    settings = resolve_settings({"output_root": str(root), "verbosity": 0}).settings
    outcome = suggest(ckpt, settings, SuggestRequest(path, min(count, len(pool)), strategy, None, seed))
    return outcome.frame.position.astype(int).tolist()


def curve(name: str, strategy: str, seed: int, work: Path, budget: int) -> list[tuple[int, float]]:
    paths = make_splits(name, work / name / "splits")
    pool = pd.read_csv(paths["train80"], dtype=str, keep_default_na=False).reset_index(drop=True)
    test = pd.read_csv(paths["test"], dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    start = pool.groupby("category").sample(START_PER_CLASS, random_state=seed).index
    labelled, rest = pool.loc[start], pool.drop(index=start).reset_index(drop=True)
    root = work / name / "root"
    points = []
    while True:
        ckpt = train_round(root, labelled, seed)
        points.append((len(labelled), test_f1(ckpt, root, test)))
        if len(labelled) >= min(budget, len(pool)) or rest.empty:
            return points
        picked = choose(strategy, ckpt, root, rest, min(PER_ROUND, budget - len(labelled)), seed, rng)
        labelled = pd.concat([labelled, rest.iloc[picked]])
        rest = rest.drop(index=rest.index[picked]).reset_index(drop=True)


def labels_to_reach(points: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, f1 in points if f1 >= target), None)


def full_data_f1() -> dict[str, float]:
    quality = json.loads((RESULTS / "quality.json").read_text())
    scores = quality["macro_f1_and_seconds"]
    return {name: float(scores[name]["bertcls"][0]) for name in ("bbc", "sms", "tickets") if name in scores}


def round_seconds(name: str, work: Path) -> float:
    """One suggestion round on a 10,000-text pool whose embeddings are cached (the texts: BBC sentences)."""
    pool = pd.read_csv(work / name / "splits" / "train80.csv", dtype=str, keep_default_na=False)
    sentences = [s.strip() for t in pool.text for s in t.split(".") if len(s.split()) > 4]
    texts = pd.DataFrame({"text": list(dict.fromkeys(sentences))[:10_000]})
    root = work / name / "root"
    from bertcls.model.checkpoint import load_named_checkpoint

    ckpt = load_named_checkpoint(None, root)
    choose("diverse", ckpt, root, texts, 50, 0, None)  # encodes the pool into the cache
    started = time.perf_counter()
    choose("diverse", ckpt, root, texts, 50, 0, None)
    return time.perf_counter() - started


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--sets", default="tickets,bbc,sms")
    parser.add_argument("--strategies", default="diverse,random,margin,uncertainty")
    parser.add_argument("--seeds", type=comma_ints, default="0,1,2")
    parser.add_argument("--budget", type=int, default=500)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="keep the curves already in the --result file")
    parser.add_argument("--round-seconds", action="store_true", help="also time one round on a 10,000-text pool")
    parser.add_argument("--result", default="active", help="results file name under benchmarks/results (and its PNG)")
    args = parse_args(parser)
    logging.disable(logging.WARNING)
    print(cpu_line(), flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-active-"))
    full = full_data_f1()
    previous = RESULTS / f"{args.result}.json"
    done = json.loads(previous.read_text()).get("curves", {}) if args.resume and previous.is_file() else {}
    results: dict = {"cpu": cpu_line(), "full_data_f1": full, "curves": done}
    for name in args.sets.split(","):
        for seed in args.seeds:
            for strategy in args.strategies.split(","):
                if str(seed) in results["curves"].get(name, {}).get(strategy, {}):
                    continue  # --resume: measured in an earlier run
                started = time.perf_counter()
                points = curve(name, strategy, seed, work, args.budget)
                results["curves"].setdefault(name, {}).setdefault(strategy, {})[str(seed)] = points
                mean_f1, seconds = 100 * np.mean([f for _, f in points]), time.perf_counter() - started
                line = f"{name} {seed} {strategy}: {len(points)} rounds, mean F1 {mean_f1:.2f}, {seconds:.0f} s"
                print(line, flush=True)
                save_result(args.result, results)
    if "bbc" in args.sets.split(",") and args.round_seconds:
        results["round_seconds_10k"] = round_seconds("bbc", work)
    results["summary"] = summarise(results["curves"], full)
    save_result(args.result, results)
    plot(results["curves"], RESULTS / f"{args.result}_curves.png")
    print(table(results["summary"]))


def area(points: list[tuple[int, float]], grid: list[int]) -> float:
    """Mean macro F1 (points) over the label counts of ``grid``, each read at the curve's last round at or below it:
    a strategy whose round came back short (near-copies skipped) gets no extra round near the end."""
    counts = np.asarray([n for n, _ in points])
    at = np.searchsorted(counts, grid, side="right") - 1
    if not len(grid) or (at < 0).any():
        raise ValueError(f"a curve starting at {counts[0]} labels cannot be read on the grid {grid}")
    return 100 * float(np.mean([points[i][1] for i in at]))


def common_grid(strategies: dict) -> list[int]:
    """The label counts random selection was scored at (the same for every seed; without random, the first
    strategy's, which may include a short round's count)."""
    seeds = strategies.get("random") or next(iter(strategies.values()))
    grids = {tuple(n for n, _ in points) for points in seeds.values()}
    if len(grids) != 1:
        raise ValueError(f"the seeds' rounds differ in their label counts: {sorted(grids)}")
    return list(grids.pop())


def summarise(curves: dict, full: dict[str, float]) -> dict:
    summary = {}
    for name, strategies in curves.items():
        target, grid = 0.97 * full.get(name, 1.0), common_grid(strategies)
        summary[name] = {
            strategy: {
                "area": float(np.mean([area(pts, grid) for pts in seeds.values()])),
                "labels_to_97pct": [labels_to_reach(pts, target) for pts in seeds.values()],
                "seeds": len(seeds),
            }
            for strategy, seeds in strategies.items()
        }
    return summary


def table(summary: dict) -> str:
    lines = ["| set | strategy | seeds | area (mean F1 on random's label counts) | against random "
             "| labels to 97% of full-data F1 (per seed) |", "|---|---|---:|---:|---:|---|"]  # fmt: skip
    for name, strategies in summary.items():
        random = strategies.get("random", {}).get("area")
        for strategy, row in strategies.items():
            reach = ", ".join("never" if n is None else str(n) for n in row["labels_to_97pct"])
            gain = "" if random is None or strategy == "random" else f"{row['area'] - random:+.2f}"
            lines.append(f"| {name} | {strategy} | {row['seeds']} | {row['area']:.2f} | {gain} | {reach} |")
    return "\n".join(lines)


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (name, strategies) in zip(axes[0], curves.items(), strict=True):
        for strategy, seeds in strategies.items():
            runs = list(seeds.values())
            length = min(len(r) for r in runs)
            xs = [n for n, _ in runs[0][:length]]
            ys = np.mean([[f for _, f in r[:length]] for r in runs], axis=0)
            ax.plot(xs, ys, label=strategy)
        ax.set_title(name)
        ax.set_xlabel("labels")
        ax.set_ylabel("test macro F1")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
