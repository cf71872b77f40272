"""Frozen-mode `bertcls optimize` on the BBC data.

Reports the wall time of 20 TPE trials (cold: the study encodes the texts once) as a ratio to one cold
`bertcls train` (target <= 2), and the best trial's test macro F1 against the default `train`'s.
Run: python benchmarks/bench_optimize.py [--trials 20]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, bertcls, data_file, parse_args, save_result, timed

MAX_SEQ_LEN = 128


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--trials", type=int, default=20)
    args = parse_args(parser)
    work = Path(tempfile.mkdtemp(prefix="bench-optimize-"))
    try:
        common = ("--data-file", str(data_file("bbc-text.csv")), "--max-seq-len", str(MAX_SEQ_LEN), "--verbosity", "0")
        train_wall, _ = timed(bertcls("train", "--output-root", str(work / "train"), *common), cwd=work)
        opt_wall, _ = timed(
            bertcls(
                "optimize",
                "--output-root",
                str(work / "opt"),
                "--study-name",
                "bench",
                "--n-trials",
                str(args.trials),
                *common,
            ),
            cwd=work,
        )
        import optuna

        from bertcls.model.checkpoint import load_checkpoint

        default = load_checkpoint(work / "train" / "best_trials" / "best_model.pt").meta
        best = load_checkpoint(work / "opt" / "best_trials" / "best_model.pt").meta
        study = optuna.load_study(study_name="bench", storage=f"sqlite:///{work / 'opt' / 'optuna' / 'bench.db'}")
        states = [t.state.name for t in study.trials]
        save_result(
            "optimize",
            {
                "trials": args.trials,
                "train_cold_s": round(train_wall, 2),
                "optimize_cold_s": round(opt_wall, 2),
                "optimize_over_train": round(opt_wall / train_wall, 3),
                "complete": states.count("COMPLETE"),
                "pruned": states.count("PRUNED"),
                "default_train_test_f1": round(default.metrics["test"]["f1"], 4),
                "best_trial": best.tuning.trial,
                "best_trial_val_f1": round(study.best_value, 4),
                "best_trial_test_f1": round(best.metrics["test"]["f1"], 4),
                "best_params": best.tuning.params,
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
