"""bertcls serve: the same predictions as predict (both tasks, both backends), batching, the bounded queue, bad
requests, the API key, reload, SIGTERM with requests in flight, and the page in headless Chromium. Real servers bind
a free port on loopback and are stopped by the test that started them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from bertcls.serving.batching import MicroBatcher
from tests.conftest import thread_subset

BERTCLS = [sys.executable, "-m", "bertcls"]
KEY = "k3y-0f-the-serv3r-" + "x" * 12


class Server:
    """``bertcls serve`` in a subprocess on a free loopback port; stopped (SIGTERM) by :meth:`stop`."""

    def __init__(self, root: Path, *extra: str, cwd: Path | None = None, env: dict[str, str] | None = None):
        command = [*BERTCLS, "serve", "--output-root", str(root), "--port", "0", "--precision", "fp32", *extra]
        self.process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, **(env or {})})  # fmt: skip
        self.lines: list[str] = []
        self.url = ""
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while not self.url and time.monotonic() < deadline and self.process.poll() is None:
            time.sleep(0.05)
        assert self.url, "the server did not start: " + "".join(self.lines)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if found := re.search(r"Serving on (http://\S+/)", line):
                self.url = found.group(1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()

    @property
    def output(self) -> str:
        out = self.process.stdout.read() if self.process.stdout and self.process.poll() is not None else ""
        return "".join(self.lines) + (out or "")


@pytest.fixture(scope="module")
def server(trained_model):
    running = Server(trained_model, "--max-wait-ms", "50", "--max-batch-size", "64")
    yield running
    assert running.stop() == 143


def post(client: httpx.Client, texts, **kwargs) -> httpx.Response:
    return client.post("/v1/predict", json={"texts": texts}, **kwargs)


# ---------------------------------------------------------------- the same predictions as predict


def predict_cli(cli, root: Path, texts: list[str], *extra: str) -> pd.DataFrame:
    data = root.parent / f"serve-agreement-{root.name}.csv"
    pd.DataFrame({"text": texts}).to_csv(data, index=False)
    code, _, err = cli("predict", "--output-root", root, "--data-file", data, "--output-file", "agreement.csv",
                       "--precision", "fp32", "-v", "0", *extra)  # fmt: skip
    assert code == 0, err
    return pd.read_csv(root / "predictions" / "agreement.csv", dtype=str, keep_default_na=False)


def served(root: Path, texts: list[str], backend: str, min_confidence: float | None = None) -> dict:
    """The server's answer, in process (the FastAPI app with its batcher, through Starlette's test client)."""
    from fastapi.testclient import TestClient

    from bertcls.config.sources import resolve_settings
    from bertcls.serving.app import ServerState, create_app
    from bertcls.serving.engine import load_model

    flags = {"output_root": str(root), "serve.backend": backend, "model.precision": "fp32", "verbosity": 0,
             "serve.min_confidence": min_confidence}  # fmt: skip
    settings = resolve_settings(flags).settings
    with TestClient(create_app(ServerState(settings, None, load_model(settings, None)))) as client:
        response = post(client, texts)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_single_label_server_agrees_with_predict(cli, trained_model, backend):
    if backend == "onnx":
        code, _, err = cli("export", "--output-root", trained_model, "-v", "0")
        assert code == 0, err
    texts = thread_subset(8, seed=5).text.tolist()
    expected = predict_cli(cli, trained_model, texts, "--backend", backend)
    answer = served(trained_model, texts, backend)["predictions"]
    tolerance = 1e-6 if backend == "torch" else 1e-4
    labels = [c.removeprefix("prob_") for c in expected.columns if c.startswith("prob_")]
    for row, prediction in zip(expected.itertuples(index=False), answer, strict=True):
        assert prediction["label"] == row.predicted_label and prediction["labels"] == [row.predicted_label]
        assert abs(prediction["confidence"] - float(row.confidence)) <= tolerance
        given = np.array([prediction["probabilities"][label] for label in labels])
        assert np.abs(given - np.array([float(getattr(row, f"prob_{label}")) for label in labels])).max() <= tolerance


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_multi_label_server_agrees_with_predict_with_min_confidence(cli, ml_model, backend):
    if backend == "onnx":
        code, _, err = cli("export", "--output-root", ml_model, "-v", "0")
        assert code == 0, err
    texts = pd.read_csv(ml_model / "data" / "test.csv", dtype=str, keep_default_na=False).text.tolist()[:24]
    expected = predict_cli(cli, ml_model, texts, "--backend", backend, "--min-confidence", "0.8")
    answer = served(ml_model, texts, backend, min_confidence=0.8)["predictions"]
    tolerance = 1e-6 if backend == "torch" else 1e-4
    assert any(row.unsure_labels for row in expected.itertuples())  # the threshold bites somewhere
    for row, prediction in zip(expected.itertuples(index=False), answer, strict=True):
        assert "|".join(prediction["labels"]) == row.predicted_labels and prediction["label"] is None
        assert "|".join(prediction["unsure_labels"]) == row.unsure_labels
        assert prediction["abstained"] == (row.abstained == "true")
        for label, p in prediction["probabilities"].items():
            assert abs(p - float(getattr(row, f"prob_{label}"))) <= tolerance


# ---------------------------------------------------------------- a real server: requests, batching, bad requests


@pytest.mark.slow
def test_concurrent_requests_share_batches_and_metrics_say_so(server):
    texts = thread_subset(4, seed=9).text.tolist()[:16]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/predict", json={"texts": [t]}) for t in texts))

    before = batch_counts(server.client.get("/metrics").text)
    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    after = batch_counts(server.client.get("/metrics").text)
    batches, batched_texts = after[0] - before[0], after[1] - before[1]
    assert batched_texts == len(texts) and batches < len(texts)  # several requests went through one model batch
    metrics = server.client.get("/metrics").text
    assert 'bertcls_requests_total{code="200",endpoint="/v1/predict"}' in metrics
    assert "bertcls_request_seconds_bucket" in metrics and "bertcls_queue_texts" in metrics


def batch_counts(metrics: str) -> tuple[float, float]:
    count = float(re.search(r"^bertcls_batch_texts_count (\S+)$", metrics, re.M).group(1))
    total = float(re.search(r"^bertcls_batch_texts_sum (\S+)$", metrics, re.M).group(1))
    return count, total


BAD_REQUESTS = [
    ("not json", b"{texts: oops", "application/json", 400, "not valid JSON"),
    ("a list", b'["a", "b"]', "application/json", 422, "Invalid request"),
    ("wrong type", b'{"texts": "one text"}', "application/json", 422, "texts: Input should be a valid list"),
    ("a number", b'{"texts": ["ok", 3]}', "application/json", 422, "texts.1: Input should be a valid string"),
    ("extra field", b'{"texts": ["ok"], "x": 1}', "application/json", 422, "x: Extra inputs are not permitted"),
    ("empty list", b'{"texts": []}', "application/json", 422, "texts is empty"),
    ("too many", json.dumps({"texts": ["a"] * 300}).encode(), "application/json", 413, "at most 256 texts"),
    ("too large", b'{"texts": ["' + b"a" * 4_100_000 + b'"]}', "application/json", 413, "serve.max_body_bytes"),
    ("text too long", json.dumps({"texts": ["a" * 100_001]}).encode(), "application/json", 413, "100,001 characters"),
    ("bad utf-8", b'{"texts": ["\xff\xfe"]}', "application/json", 400, "not valid JSON"),
    ("deep nesting", b'{"texts": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "application/json", 400, "nests too"),
]


@pytest.mark.slow
def test_every_bad_request_is_a_4xx_with_one_sentence_and_the_server_keeps_serving(server):
    for name, body, kind, status, words in BAD_REQUESTS:
        response = server.client.post("/v1/predict", content=body, headers={"Content-Type": kind})
        assert response.status_code == status, (name, response.text)
        message = response.json()["error"]
        assert words in message and "Traceback" not in message and message.count(". ") == 0, (name, message)
    assert server.client.get("/v1/nothing").status_code == 404
    assert server.client.get("/v1/predict").status_code == 405
    assert post(server.client, ["still serving"]).status_code == 200
    assert server.client.get("/readyz").json()["status"] == "ready"


@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after(trained_model):
    busy = Server(trained_model, "--max-queue", "4", "--max-batch-size", "4", "--max-wait-ms", "0")
    try:
        texts = thread_subset(8, seed=3).text.tolist()[:4]

        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=busy.url, timeout=60) as client:
                return await asyncio.gather(*(client.post("/v1/predict", json={"texts": texts}) for _ in range(24)))

        codes = [r.status_code for r in asyncio.run(flood())]
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
        rejected = next(r for r in asyncio.run(flood()) if r.status_code == 503)
        assert rejected.headers["retry-after"] == "1" and "serve.max_queue" in rejected.json()["error"]
        assert post(busy.client, texts).status_code == 200  # and it goes on serving
    finally:
        busy.stop()


def test_a_batch_whose_model_fails_fails_only_its_requests():
    calls: list[list[str]] = []

    def run_batch(texts: list[str]) -> list[str]:
        calls.append(texts)
        if "boom" in texts:
            raise RuntimeError("the model failed")
        return [t.upper() for t in texts]

    async def scenario() -> tuple[BaseException | list, list]:
        batcher = MicroBatcher(run_batch, max_batch_size=8, max_wait_s=0, max_queue=100, observe=lambda *_: None)
        batcher.start()
        try:
            failed = await asyncio.gather(batcher.submit(["boom"]), return_exceptions=True)
            served = await batcher.submit(["fine"])
        finally:
            await batcher.stop()
        return failed[0], served

    failed, served = asyncio.run(scenario())
    assert isinstance(failed, RuntimeError) and served == ["FINE"]


def test_the_queue_is_bounded_in_texts_but_an_empty_queue_takes_any_request():
    from bertcls.serving.batching import QueueFull

    async def scenario() -> None:
        batcher = MicroBatcher(
            lambda texts: texts, max_batch_size=8, max_wait_s=0, max_queue=4, observe=lambda *_: None
        )
        batcher.admit(10)  # larger than the queue, but nothing waits: taken (it would never fit otherwise)
        batcher.waiting_texts = 3
        batcher.admit(1)
        with pytest.raises(QueueFull):
            batcher.admit(2)

    asyncio.run(scenario())


def test_a_lone_request_on_an_idle_server_does_not_wait_for_a_batch_to_fill():
    async def scenario() -> float:
        batcher = MicroBatcher(lambda texts: texts, max_batch_size=64, max_wait_s=2.0, max_queue=100,
                               observe=lambda *_: None)  # fmt: skip
        batcher.start()
        try:
            started = time.perf_counter()
            await batcher.submit(["alone"])
            return time.perf_counter() - started
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) < 0.5  # far below max_wait (2 s): nothing else was arriving


# ---------------------------------------------------------------- key, reload, SIGTERM, start-up faults, the page


@pytest.mark.slow
def test_the_api_key_guards_every_endpoint_but_healthz_and_never_shows(trained_model, tmp_path):
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n")
    guarded = Server(trained_model, "--api-key-file", str(key_file), "--workers", "2", "-v", "2")
    bodies = []
    try:
        for path in ("/v1/model", "/metrics", "/docs", "/openapi.json"):
            response = guarded.client.get(path)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer", path
            bodies.append(response.text)
        bad = post(guarded.client, ["x"], headers={"Authorization": "Bearer " + KEY[:-1] + "?"})
        assert bad.status_code == 401
        for path in ("/healthz", "/readyz", "/"):  # liveness, readiness (for load balancers) and the page
            assert guarded.client.get(path).status_code == 200, path
        auth = {"Authorization": f"Bearer {KEY}"}
        for _ in range(4):  # whichever worker answers
            response = post(guarded.client, ["refund please"], headers=auth)
            assert response.status_code == 200
        info = guarded.client.get("/v1/model", headers=auth)
        assert info.status_code == 200
        bodies += [info.text, bad.text, response.text]
    finally:
        code = guarded.stop()
    assert code == 143  # the supervisor of --workers 2 ends as one process does
    assert all(KEY not in body for body in bodies)
    assert KEY not in guarded.output
    for path in trained_model.rglob("*.log"):
        assert KEY not in path.read_text(errors="replace"), path


@pytest.mark.slow
def test_reload_swaps_the_model_without_dropping_requests_and_a_bad_model_keeps_the_old(
    trained_model, threads_small, tmp_path
):
    root = tmp_path / "root"
    shutil.copytree(trained_model, root, ignore=shutil.ignore_patterns("export", "predictions", "logs"))
    running = Server(root)
    try:
        probe = ["my parcel never arrived"]
        before = post(running.client, probe).json()["predictions"][0]["probabilities"]
        done = subprocess.run([*BERTCLS, "train", "--output-root", str(root), "--data-file", str(threads_small),
                               "--max-seq-len", "128", "--seed", "11", "--num-epochs", "2", "-v", "0"],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        many = thread_subset(60, seed=4).text.tolist()[:256]
        in_flight: dict[str, httpx.Response] = {}
        sender = threading.Thread(target=lambda: in_flight.setdefault("r", post(running.client, many)))
        sender.start()
        time.sleep(0.05)
        reloaded = running.client.post("/v1/reload")
        sender.join()
        assert reloaded.status_code == 200 and reloaded.json()["reloaded"], reloaded.text
        assert in_flight["r"].status_code == 200 and len(in_flight["r"].json()["predictions"]) == len(many)
        after = post(running.client, probe).json()["predictions"][0]["probabilities"]
        assert after != before  # the retrained model answers now
        (root / "best_trials" / "best_model.pt").write_bytes(b"not a checkpoint")
        refused = running.client.post("/v1/reload")
        assert refused.status_code == 409 and "the old one is still served" in refused.json()["error"]
        assert post(running.client, probe).json()["predictions"][0]["probabilities"] == after
        running.process.send_signal(signal.SIGHUP)  # SIGHUP reloads too: the bad file again, so nothing changes
        time.sleep(1.0)
        assert post(running.client, probe).status_code == 200
        assert 'bertcls_reloads_total{outcome="failed"} 2.0' in running.client.get("/metrics").text
    finally:
        assert running.stop() == 143


@pytest.mark.slow
def test_sigterm_finishes_the_requests_in_flight_then_exits_143(trained_model):
    running = Server(trained_model, env={"BERTCLS_SERVE__SHUTDOWN_TIMEOUT_S": "120"})  # however loaded the machine
    many = thread_subset(60, seed=6).text.tolist()[:128]
    result: dict[str, httpx.Response] = {}
    sender = threading.Thread(target=lambda: result.setdefault("r", post(running.client, many)))
    sender.start()
    time.sleep(0.3)
    running.process.send_signal(signal.SIGTERM)
    sender.join(timeout=60)
    assert result["r"].status_code == 200 and len(result["r"].json()["predictions"]) == len(many)
    assert running.process.wait(timeout=30) == 143
    assert "Interrupted by SIGTERM" in running.output and "Traceback" not in running.output


@pytest.mark.slow
def test_a_port_in_use_or_a_missing_model_is_one_sentence_before_binding(trained_model, tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        done = subprocess.run([*BERTCLS, "serve", "--output-root", str(trained_model), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        holder.close()
    assert done.returncode == 2 and f"Port {port} on 127.0.0.1 is in use" in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run([*BERTCLS, "serve", "--output-root", str(tmp_path / "nothing"), "--port", "0"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "does not exist" in done.stderr and "Serving on" not in done.stderr


def test_a_short_api_key_is_refused(cli, trained_model, tmp_path):
    key_file = tmp_path / "short.txt"
    key_file.write_text("abc\n")
    code, _, err = cli("serve", "--output-root", trained_model, "--api-key-file", key_file, "--port", "0")
    assert code == 2 and "at least 16 ASCII characters" in " ".join(err.split())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium (apt-get install chromium)")
def test_the_page_shows_labels_with_probability_bars_in_a_real_browser(server, tmp_path):
    url = server.url + "?text=" + httpx.QueryParams({"t": "I was charged twice for my order"})["t"].replace(" ", "%20")
    done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    dom = done.stdout
    assert '<div class="result">' in dom, done.stderr[-2000:]
    assert "I was charged twice for my order" in dom
    decision = re.search(r'<div class="decision">([^<]+)</div>', dom).group(1)
    expected = post(server.client, ["I was charged twice for my order"]).json()["predictions"][0]
    assert decision.startswith(expected["label"]) and f"{100 * expected['confidence']:.1f}%" in decision
    bars = re.findall(r'<span class="label">([^<]+)</span>.*?width: ([\d.]+)%', dom)
    assert len(bars) == len(expected["probabilities"])
    assert "test macro F1" in dom and "best_model.pt" in dom
