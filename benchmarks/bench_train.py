"""Frozen-mode `bertcls train` on all BBC texts at max_seq_len 128.

Reports: cold run / plain SentenceTransformer.encode (target <= 1.15), warm-cache run / cold run
(target <= 0.1), and the test macro F1 (target >= 0.975). Run: python benchmarks/bench_train.py
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, bertcls, data_file, parse_args, save_result, st_encode_script, timed

MAX_SEQ_LEN = 128


def logistic_regression_f1(root: Path) -> float:
    """Reference: scikit-learn logistic regression on the same cached embeddings and the same split."""
    import pandas as pd
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from bertcls.config.settings import EncoderSection
    from bertcls.features.service import EmbeddingService

    service = EmbeddingService(EncoderSection(), MAX_SEQ_LEN, root, torch.device("cpu"))
    parts = {
        name: pd.read_csv(root / "data" / f"{name}.csv", dtype=str, keep_default_na=False) for name in ("train", "test")
    }
    x = {name: service.embed(part["text"].tolist())[0] for name, part in parts.items()}
    model = LogisticRegression(C=10, max_iter=3000).fit(x["train"], parts["train"]["category"])
    return float(f1_score(parts["test"]["category"], model.predict(x["test"]), average="macro"))


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved baseline/cold/warm rounds (medians reported)"
    )
    args = parse_args(parser)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        baseline, encode_only, cold, warm = [], [], [], []
        for round_number in range(args.repeats):
            wall, done = timed([sys.executable, "-c", st_encode_script(data_file("bbc-text.csv"), MAX_SEQ_LEN)])
            baseline.append(wall)
            encode_only.append(float(done.stdout.strip().splitlines()[-1]))
            root = work / f"out{round_number}"
            train = (
                "train",
                "--output-root",
                str(root),
                "--data-file",
                str(data_file("bbc-text.csv")),
                "--max-seq-len",
                str(MAX_SEQ_LEN),
                "--verbosity",
                "0",
            )
            cold.append(timed(bertcls(*train), cwd=work)[0])
            warm.append(timed(bertcls(*train), cwd=work)[0])
        from bertcls.model.checkpoint import load_checkpoint

        meta = load_checkpoint(root / "best_trials" / "best_model.pt").meta
        reference_f1 = logistic_regression_f1(root)
        save_result(
            "train",
            {
                "texts": 2225,
                "max_seq_len": MAX_SEQ_LEN,
                "rounds": args.repeats,
                "st_encode_process_s": [round(x, 2) for x in baseline],
                "st_encode_only_s": [round(x, 2) for x in encode_only],
                "train_cold_s": [round(x, 2) for x in cold],
                "train_warm_s": [round(x, 2) for x in warm],
                "cold_over_st_encode_median": round(
                    statistics.median(c / b for c, b in zip(cold, baseline, strict=True)), 3
                ),
                "warm_over_cold_median": round(statistics.median(w / c for w, c in zip(warm, cold, strict=True)), 3),
                "test_macro_f1": round(meta.metrics["test"]["f1"], 4),
                "test_accuracy": round(meta.metrics["test"]["accuracy"], 4),
                "logistic_regression_same_split_f1": round(reference_f1, 4),
                "epochs": len(meta.history),
                "stop_reason": meta.stop_reason,
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
