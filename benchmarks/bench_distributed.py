"""torchrun on this machine: two processes of one thread each against one process of two threads.

On the fixed BBC split of ``quality.py`` (80/20, random_state 0; 10% of the 80% as validation) at 128 tokens:
1. embedding: a cold frozen ``train --num-epochs 1`` (every text encoded; fp32 so both runs do the same
   arithmetic), texts per second of wall time;
2. fine-tuning: ``train --fine-tune --num-epochs 1 --batch-size 16`` (per rank under torchrun), samples per second
   of the epoch, and the test macro F1 each run reaches.

    python benchmarks/bench_distributed.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, benchmark_parser, bertcls, parse_args, save_result, timed
from quality import make_splits

sys.path.insert(0, str(REPO))


def count_rows(path: Path) -> int:
    """Data rows of a CSV file (its lines less the header)."""
    with open(path) as handle:
        return sum(1 for _ in handle) - 1


def launch(*args: str, two_ranks: bool) -> list[str]:
    if not two_ranks:
        return bertcls(*args)
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "bertcls", *args]


def run(root: Path, paths: dict, work: Path, *flags: str, two_ranks: bool) -> float:
    files = ["--train-file", str(paths["train"]), "--val-file", str(paths["val"]), "--test-file", str(paths["test"])]
    args = ("train", "--output-root", str(root), *files, "--max-seq-len", "128", "-v", "0", *flags)
    os.environ["OMP_NUM_THREADS"] = "1" if two_ranks else "2"
    started = time.perf_counter()
    timed(launch(*args, two_ranks=two_ranks), cwd=work)
    return time.perf_counter() - started


def main() -> None:
    from bertcls.model.checkpoint import load_checkpoint

    parse_args(benchmark_parser(__doc__))
    work = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    results: dict = {}
    try:
        paths = make_splits("bbc", work / "data")
        texts = count_rows(paths["train80"]) + count_rows(paths["test"])
        for name, two in (("one_process_2_threads", False), ("torchrun_2x1_thread", True)):
            wall = run(work / f"embed-{name}", paths, work, "--num-epochs", "1", "--precision", "fp32", two_ranks=two)
            root = work / f"ft-{name}"
            run(root, paths, work, "--fine-tune", "--num-epochs", "1", "--batch-size", "16", two_ranks=two)
            ckpt = load_checkpoint(root / "best_trials" / "best_model.pt")
            rows = count_rows(paths["train"])
            results[name] = {
                "cold_frozen_train_s": round(wall, 1),
                "texts_per_s": round(texts / wall, 1),
                "fine_tune_samples_per_s": round(rows / ckpt.meta.history[0].seconds, 2),
                "fine_tune_test_macro_f1": round(ckpt.meta.metrics["test"]["f1"], 4),
            }
            print(name, results[name], flush=True)
        save_result("distributed", results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
