"""The embedding cache at a million texts: lookup time and the memory of a frozen ``train`` that reads it.

1. A cache of 1,000,000 distinct synthetic short texts (random 384-dimensional vectors in 10 shards, written
   through ``EmbeddingCache.add`` under the bundled encoder's fingerprint at 128 tokens, fp32), reopened, then a
   lookup of all 1,000,000 hashes (and of 1,000,000 hashes that are not there).
2. Peak RSS of a frozen ``bertcls train --precision fp32 --num-epochs 1`` on those 1,000,000 texts (every
   embedding from the cache, so the encoder is never loaded), against the same command on 1,000 of them (the
   process's own footprint: Python, torch, scikit-learn).

    python benchmarks/bench_cache.py [--rows 1000000]
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
from common import REPO, benchmark_parser, bertcls, parse_args, peak_rss_mb, save_result

sys.path.insert(0, str(REPO))
WORDS = "market team film phone vote bank match album court energy profit coach drama server budget".split()  # noqa: SIM905


def synthetic_texts(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(WORDS), size=(rows, 3))
    texts = [f"{WORDS[a]} {WORDS[b]} {WORDS[c]} note {i}" for i, (a, b, c) in enumerate(picks)]
    return pd.DataFrame({"text": texts, "category": np.array(["a", "b", "c", "d"])[picks[:, 0] % 4]})


def fill_cache(root: Path, texts: list[str], shards: int = 10) -> float:
    from bertcls.config.settings import EncoderSection
    from bertcls.features.cache import EmbeddingCache, text_hash
    from bertcls.model.encoder import fingerprint, resolve_encoder_folder

    folder = resolve_encoder_folder(EncoderSection(), root)
    cache = EmbeddingCache(root, fingerprint(folder), 128, "mean")
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    for part in np.array_split(np.arange(len(texts)), shards):
        vectors = rng.normal(size=(len(part), 384)).astype(np.float32)
        cache.add([text_hash(texts[i]) for i in part], vectors, np.full(len(part), 12))
    return time.perf_counter() - started


def lookup_seconds(root: Path, texts: list[str]) -> dict[str, float]:
    from bertcls.config.settings import EncoderSection
    from bertcls.features.cache import EmbeddingCache, text_hash
    from bertcls.model.encoder import fingerprint, resolve_encoder_folder

    cache = EmbeddingCache(root, fingerprint(resolve_encoder_folder(EncoderSection(), root)), 128, "mean")
    started = time.perf_counter()
    hashes = [text_hash(t) for t in texts]
    hashed = time.perf_counter()
    found, vectors, _ = cache.lookup_arrays(hashes)
    looked = time.perf_counter()
    absent = [text_hash(t + " (absent)") for t in texts]
    started_absent = time.perf_counter()
    none, _, _ = cache.lookup_arrays(absent)
    done = time.perf_counter()
    assert found.all() and not none.any() and vectors.shape == (len(texts), 384)
    return {
        "open_and_lookup_s": round(looked - hashed, 2),
        "hashing_s": round(hashed - started, 2),
        "lookup_absent_s": round(done - started_absent, 2),
    }


def train_rss(root: Path, data: Path, work: Path) -> tuple[float, float]:
    command = bertcls("train", "--output-root", str(root), "--data-file", str(data), "--precision", "fp32")
    command += ["--num-epochs", "1", "--max-seq-len", "128", "--verbosity", "0"]
    return peak_rss_mb(command, cwd=work)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parse_args(parser)
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        frame = synthetic_texts(args.rows)
        root = work / "root"
        fill = fill_cache(root, frame.text.tolist())
        result = {"rows": args.rows, "fill_s": round(fill, 1), **lookup_seconds(root, frame.text.tolist())}
        print(result, flush=True)
        small, big = work / "small.csv", work / "big.csv"
        frame.head(1000).to_csv(small, index=False)
        frame.to_csv(big, index=False)
        wall_small, rss_small = train_rss(root, small, work)
        wall_big, rss_big = train_rss(root, big, work)
        result.update(
            {
                "train_1000_rows": {"wall_s": round(wall_small, 1), "peak_rss_mb": round(rss_small)},
                f"train_{args.rows}_rows": {"wall_s": round(wall_big, 1), "peak_rss_mb": round(rss_big)},
                "peak_rss_above_small_run_mb": round(rss_big - rss_small),
            }
        )
        save_result("cache", result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
