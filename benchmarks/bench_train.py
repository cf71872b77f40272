"""Frozen-mode `bertcls train` on all BBC texts at max_seq_len 128.

Reports: cold run / plain SentenceTransformer.encode (target <= 1.15), warm-cache run / cold run
(target <= 0.1), and the test macro F1 (target >= 0.975). Run: python benchmarks/bench_train.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BBC, bertcls, save_result, st_encode_script, timed  # noqa: E402

MAX_SEQ_LEN = 128


def logistic_regression_f1(root: Path) -> float:
    """Reference: scikit-learn logistic regression on the same cached embeddings and the same split."""
    import pandas as pd
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from bertcls.config import EncoderSection
    from bertcls.features import EmbeddingService

    service = EmbeddingService(EncoderSection(), MAX_SEQ_LEN, root, torch.device("cpu"))
    parts = {name: pd.read_csv(root / "data" / f"{name}.csv", dtype=str, keep_default_na=False) for name in ("train", "test")}
    x = {name: service.embed(part["text"].tolist())[0] for name, part in parts.items()}
    model = LogisticRegression(C=10, max_iter=3000).fit(x["train"], parts["train"]["category"])
    return float(f1_score(parts["test"]["category"], model.predict(x["test"]), average="macro"))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        baseline_wall, done = timed([sys.executable, "-c", st_encode_script(BBC, MAX_SEQ_LEN)])
        encode_only = float(done.stdout.strip().splitlines()[-1])
        args = ("train", "--output-root", str(work / "out"), "--data-file", str(BBC),
                "--max-seq-len", str(MAX_SEQ_LEN), "--verbosity", "0")
        cold, _ = timed(bertcls(*args), cwd=work)
        warm, _ = timed(bertcls(*args), cwd=work)
        from bertcls.checkpoint import load_checkpoint

        meta = load_checkpoint(work / "out" / "best_trials" / "best_model.pt").meta
        reference_f1 = logistic_regression_f1(work / "out")
        save_result("train", {
            "texts": 2225,
            "max_seq_len": MAX_SEQ_LEN,
            "st_encode_process_s": round(baseline_wall, 2),
            "st_encode_only_s": round(encode_only, 2),
            "train_cold_s": round(cold, 2),
            "train_warm_s": round(warm, 2),
            "cold_over_st_encode": round(cold / baseline_wall, 3),
            "warm_over_cold": round(warm / cold, 3),
            "test_macro_f1": round(meta["metrics"]["test"]["f1"], 4),
            "test_accuracy": round(meta["metrics"]["test"]["accuracy"], 4),
            "logistic_regression_same_split_f1": round(reference_f1, 4),
            "epochs": len(meta["history"]),
            "stop_reason": meta["stop_reason"],
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
