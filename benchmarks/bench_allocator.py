"""Does keeping freed memory for the next step (``bertcls/runtime/memory.py``'s ``reuse_freed_memory``, issue 23)
make CPU fine-tuning faster? Interleaved pairs of fresh processes, each one fp32 (or ``--precision``) fine-tuning
epoch of ``bench_speed.py`` (the same 640 BBC training rows, batch 16, 128 tokens): with the setting, as bertcls
runs, and without it (``GLIBC_TUNABLES`` set to a value that changes nothing, which makes bertcls leave glibc's
allocator as it is). Reports each pair's samples/s, page faults and peak RSS, and the median ratio. Writes
benchmarks/results/allocator.json (or ``--result``.json). Not a timed test: run it by hand, on quiet cores.

    python benchmarks/bench_allocator.py [--pairs 3] [--precision fp32] [--rows 640]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import fine_tune_in_fresh_process, fine_tune_rows, make_splits
from common import benchmark_parser, cpu_line, parse_args, save_result

UNCHANGED = {"GLIBC_TUNABLES": "glibc.malloc.perturb=0"}  # glibc's default: bertcls then keeps its hands off


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--rows", type=int, default=640)
    parser.add_argument("--result", default="allocator", help="results file name under benchmarks/results")
    args = parse_args(parser)
    print(cpu_line(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-allocator-"))
    try:
        paths = make_splits(work / "data")
        train_file, splits = fine_tune_rows(work, paths, args.rows), paths["train"].parent
        runs: dict[str, list[dict]] = {"glibc_defaults": [], "freed_memory_kept": []}
        for number in range(args.pairs):
            for mode, env in (("glibc_defaults", UNCHANGED), ("freed_memory_kept", None)):
                root = work / f"{mode}-{number}"
                run = fine_tune_in_fresh_process("bertcls", args.precision, train_file, splits, root, env)
                runs[mode].append(run)
                print(mode, {k: round(v, 3) for k, v in run.items()}, flush=True)
        ratios = [k["rate"] / d["rate"] for d, k in zip(runs["glibc_defaults"], runs["freed_memory_kept"], strict=True)]
        result = {
            "cpu": cpu_line(),
            "precision": args.precision,
            "rows": args.rows,
            "runs": runs,
            "kept_over_defaults_each_pair": [round(r, 3) for r in ratios],
            "kept_over_defaults_median": round(statistics.median(ratios), 3),
        }
        save_result(args.result, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
