"""Issue 25: what tracking costs. A cold frozen train on all of BBC and a 20-trial TPE study, each run without
tracking, with ``--track mlflow`` (the default local store, made fresh) and with ``--track tensorboard``,
interleaved, as ratios of wall time to the untracked run of the same round (target: at most 1.02). A second
untracked run in every round ("repeat") gives the noise floor: its ratio to the first should be 1.

    python benchmarks/bench_tracking.py [--rounds 2] [--trials 20]
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path

from common import benchmark_parser, bertcls, cpu_line, data_file, parse_args, save_result, timed

# "repeat" is the untracked run again: the spread between two identical runs is the noise the ratios sit in
MODES = {"none": [], "mlflow": ["--track", "mlflow"], "tensorboard": ["--track", "tensorboard"], "repeat": []}


def cold_train(work: Path, bbc: Path, mode: str, round_: int) -> float:
    root = work / f"train_{mode}_{round_}"
    shutil.rmtree(root, ignore_errors=True)
    seconds, done = timed(bertcls("train", "--output-root", str(root), "--data-file", str(bbc), "-v", "0",
                                  *MODES[mode]))  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"train ({mode}) failed:\n{done.stderr[-2000:]}")
    shutil.rmtree(root, ignore_errors=True)
    return seconds


def study(work: Path, bbc: Path, mode: str, round_: int, trials: int) -> float:
    """A TPE study on a warm embedding cache (the encoder pass is the train benchmark's): trials dominate."""
    root = work / f"study_{mode}_{round_}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(work / "warm", root)
    name = f"s_{mode}_{round_}"
    seconds, done = timed(bertcls("optimize", "--output-root", str(root), "--data-file", str(bbc), "--n-trials",
                                  str(trials), "--study-name", name, "-v", "0", *MODES[mode]))  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"optimize ({mode}) failed:\n{done.stderr[-2000:]}")
    shutil.rmtree(root, ignore_errors=True)
    return seconds


def ratios(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per tracked mode: the median over rounds of (tracked / untracked of the same round), and the raw seconds."""
    out = {}
    for mode in ("mlflow", "tensorboard", "repeat"):
        per_round = [t / base for t, base in zip(times[mode], times["none"], strict=True)]
        out[mode] = {"ratio_median": statistics.median(per_round), "ratios": per_round}
    return out


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trials", type=int, default=20)
    args = parse_args(parser)
    bbc = data_file("bbc-text.csv")
    print(cpu_line())
    work = Path(tempfile.mkdtemp(prefix="bench_tracking_"))
    warm, done = timed(bertcls("train", "--output-root", str(work / "warm"), "--data-file", str(bbc), "-v", "0",
                               "--num-epochs", "1"))  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    train_times: dict[str, list[float]] = {m: [] for m in MODES}
    study_times: dict[str, list[float]] = {m: [] for m in MODES}
    for round_ in range(args.rounds):
        order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
        for mode in order:
            train_times[mode].append(cold_train(work, bbc, mode, round_))
            print(f"round {round_} train {mode}: {train_times[mode][-1]:.1f} s", flush=True)
        for mode in order:
            study_times[mode].append(study(work, bbc, mode, round_, args.trials))
            print(f"round {round_} study {mode}: {study_times[mode][-1]:.1f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    result = {
        "cpu": cpu_line(),
        "rounds": args.rounds,
        "trials": args.trials,
        "cold_frozen_bbc_train_seconds": train_times,
        "cold_frozen_bbc_train": ratios(train_times),
        "tpe_study_seconds": study_times,
        "tpe_study": ratios(study_times),
    }
    save_result("tracking", result)


if __name__ == "__main__":
    main()
