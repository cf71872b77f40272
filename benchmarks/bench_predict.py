"""`bertcls predict` speed and memory.

1. Texts/s end to end (CSV in and out, process start and model load included) on the 2,225 BBC texts at
   max_seq_len 128, as a ratio to a plain SentenceTransformer.encode process over the same texts (target >= 0.95).
2. Peak RSS on a file of N rows (default 1,000,000) built by repeating short texts, against the RSS of the same
   command on 10 rows (the model itself). Target: under 2 GB above the model.
Run: python benchmarks/bench_predict.py [--rows N]
"""

from __future__ import annotations

import csv
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, bertcls, data_file, parse_args, peak_rss_mb, save_result, st_encode_script, timed

MAX_SEQ_LEN = 128
SHORT_TEXTS = [
    "Shares rose sharply after the company reported record profits.",
    "The striker scored twice in the second half to win the match.",
    "Parliament will vote on the new bill next week.",
    "The film took the top prize at the festival on Sunday.",
    "A new phone chip promises longer battery life.",
    "Interest rates were left unchanged by the central bank.",
    "The band announced a reunion tour for next summer.",
    "Ministers defended the budget against criticism from the opposition.",
]


def write_short_rows(path: Path, rows: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        for i in range(rows):
            writer.writerow([i, f"{SHORT_TEXTS[i % len(SHORT_TEXTS)]} ({i % 997})"])


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved baseline/predict rounds (median reported)")
    args = parse_args(parser)
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    try:
        subset = work / "subset.csv"
        with open(data_file("bbc-text.csv"), encoding="utf-8") as src:
            lines = list(csv.reader(src))
        with open(subset, "w", newline="", encoding="utf-8") as dst:
            csv.writer(dst).writerows([lines[0]] + lines[1:][::7])
        root = str(work / "out")
        timed(
            bertcls(
                "train",
                "--output-root",
                root,
                "--data-file",
                str(subset),
                "--max-seq-len",
                str(MAX_SEQ_LEN),
                "--verbosity",
                "0",
            ),
            cwd=work,
        )

        def predict(data, out):
            return bertcls(
                "predict",
                "--output-root",
                root,
                "--best-model",
                "best_model.pt",
                "--data-file",
                str(data),
                "--output-file",
                str(out),
                "--verbosity",
                "0",
            )

        st_walls, predict_walls = [], []
        for _ in range(args.repeats):
            st_walls.append(timed([sys.executable, "-c", st_encode_script(data_file("bbc-text.csv"), MAX_SEQ_LEN)])[0])
            predict_walls.append(timed(predict(data_file("bbc-text.csv"), work / "bbc_pred.csv"), cwd=work)[0])
        ratios = [s / p for s, p in zip(st_walls, predict_walls, strict=True)]
        tiny = work / "tiny.csv"
        write_short_rows(tiny, 10)
        _, model_rss = peak_rss_mb(predict(tiny, work / "tiny_pred.csv"), cwd=work)
        big = work / "big.csv"
        write_short_rows(big, args.rows)
        big_wall, big_rss = peak_rss_mb(predict(big, work / "big_pred.csv"), cwd=work)
        save_result(
            "predict",
            {
                "bbc_texts": 2225,
                "max_seq_len": MAX_SEQ_LEN,
                "rounds": args.repeats,
                "st_encode_process_s": [round(x, 2) for x in st_walls],
                "predict_process_s": [round(x, 2) for x in predict_walls],
                "predict_texts_per_s_median": round(2225 / statistics.median(predict_walls), 1),
                "st_encode_texts_per_s_median": round(2225 / statistics.median(st_walls), 1),
                "predict_over_st_texts_per_s_median": round(statistics.median(ratios), 3),
                "note": "BBC has 100 duplicate texts; predict runs each distinct text once",
                "big_rows": args.rows,
                "big_wall_s": round(big_wall, 1),
                "big_rows_per_s": round(args.rows / big_wall, 1),
                "model_only_peak_rss_mb": round(model_rss, 1),
                "big_peak_rss_mb": round(big_rss, 1),
                "big_rss_above_model_mb": round(big_rss - model_rss, 1),
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
