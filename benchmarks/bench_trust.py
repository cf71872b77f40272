"""Trust benchmark: finding flipped labels, calibration, and the near-duplicate scan's speed.

1. BBC with the labels of a seeded random 5% of its rows flipped to another class (duplicate texts removed first,
   so no text carries two labels): ``bertcls train``, then ``bertcls evaluate --find-label-issues --cv-folds 5``;
   precision and recall of the flipped rows of the train and validation splits among the reported issues
   (target: both >= 0.8).
2. ECE on the BBC test split before and after temperature scaling (target: after <= 0.5x before, or <= 0.02), from
   the same evaluation, and from a model trained on the clean data.
3. Wall time of the near-duplicate scan over 100,000 synthetic 384-dimensional embeddings (80,000 train against
   20,000 test, and 100,000 against 100,000).

    python benchmarks/bench_trust.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, benchmark_parser, bertcls, data_file, parse_args, save_result, timed

sys.path.insert(0, str(REPO))
FLIP_FRACTION = 0.05
SEED = 0


def flipped_bbc(folder: Path) -> tuple[Path, set[int]]:
    """A BBC copy with 5% of rows given another label; returns the file and the flipped CSV line numbers."""
    frame = pd.read_csv(data_file("bbc-text.csv")).drop_duplicates(subset="text").reset_index(drop=True)
    rng = np.random.default_rng(SEED)
    rows = rng.choice(len(frame), size=int(FLIP_FRACTION * len(frame)), replace=False)
    names = sorted(frame.category.unique())
    for row in rows:
        others = [n for n in names if n != frame.category[row]]
        frame.loc[row, "category"] = others[rng.integers(len(others))]
    path = folder / "bbc_flipped.csv"
    frame.to_csv(path, index=False)
    return path, {int(r) + 2 for r in rows}


def evaluate(root: Path, data: Path, work: Path, *flags: str) -> None:
    timed(bertcls("train", "--output-root", str(root), "--data-file", str(data), "-v", "0"), cwd=work)
    timed(bertcls("evaluate", "--output-root", str(root), "-v", "0", *flags), cwd=work)


def calibration(root: Path) -> dict[str, float]:
    table = pd.read_csv(root / "evaluation_results" / "calibration.csv").set_index("calibration")
    before, after = float(table.loc["before", "ece"]), float(table.loc["after", "ece"])
    return {
        "temperature": round(float(table.loc["after", "temperature"]), 3),
        "ece_before": round(before, 4),
        "ece_after": round(after, 4),
        "ratio": round(after / before, 3) if before else None,
        "nll_before": round(float(table.loc["before", "nll"]), 4),
        "nll_after": round(float(table.loc["after", "nll"]), 4),
    }


def label_issue_scores(root: Path, flipped: set[int]) -> dict[str, float]:
    cv_rows = pd.concat([pd.read_csv(root / "data" / f"{s}.csv") for s in ("train", "val")])
    flipped_in_cv = flipped & set(cv_rows.source_row)
    issues = pd.read_csv(root / "evaluation_results" / "label_issues.csv")
    found = set(issues.source_row) & flipped_in_cv
    return {
        "rows_cross_validated": len(cv_rows),
        "flipped_among_them": len(flipped_in_cv),
        "reported_issues": len(issues),
        "precision": round(len(found) / max(1, len(issues)), 3),
        "recall": round(len(found) / max(1, len(flipped_in_cv)), 3),
    }


def near_duplicate_speed() -> dict[str, float]:
    from bertcls.evaluation.trust import near_duplicates

    rng = np.random.default_rng(SEED)
    out = {}
    for train_rows, test_rows in ((80_000, 20_000), (100_000, 100_000)):
        train = rng.normal(size=(train_rows, 384)).astype(np.float32)
        test = rng.normal(size=(test_rows, 384)).astype(np.float32)
        test[:50] = train[:50] + 0.01 * rng.normal(size=(50, 384)).astype(np.float32)  # 50 planted duplicates
        started = time.perf_counter()
        pairs = near_duplicates(train, test, 0.97)
        out[f"{train_rows}x{test_rows}_s"] = round(time.perf_counter() - started, 1)
        out[f"{train_rows}x{test_rows}_found"] = int(len(pairs[0]))
    return out


def main() -> None:
    parse_args(benchmark_parser(__doc__))
    work = Path(tempfile.mkdtemp(prefix="bench-trust-"))
    results: dict = {}
    try:
        data, flipped = flipped_bbc(work)
        noisy = work / "noisy"
        evaluate(noisy, data, work, "--find-label-issues", "--cv-folds", "5")
        results["label_issues"] = label_issue_scores(noisy, flipped)
        results["calibration_noisy_labels"] = calibration(noisy)
        print(results, flush=True)
        clean = work / "clean"
        evaluate(clean, data_file("bbc-text.csv"), work, "--cv-folds", "0")
        results["calibration_clean"] = calibration(clean)
        results["near_duplicates"] = near_duplicate_speed()
        save_result("trust", results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
