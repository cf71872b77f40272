"""``bertcls serve``."""

from __future__ import annotations

from typing import Annotated, Optional

from bertcls.cli.common import (
    BestModel,
    ConfigFile,
    Device,
    OutputRoot,
    Precision,
    Threads,
    Verbosity,
    build_config,
    err_console,
    option,
    setup_logging,
)


def serve(
    output_root: OutputRoot = None,
    best_model: BestModel = None,
    host: Annotated[
        Optional[str], option("--host", help="Address to listen on (default 127.0.0.1: this machine only).")
    ] = None,
    port: Annotated[Optional[int], option("--port", help="Port (default 8000; 0 picks a free one).")] = None,
    backend: Annotated[
        Optional[str], option("--backend", help="torch (the checkpoint) or onnx (<output_root>/export/).")
    ] = None,
    max_batch_size: Annotated[Optional[int], option("--max-batch-size", help="Texts per model batch (64).")] = None,
    max_wait_ms: Annotated[
        Optional[float], option("--max-wait-ms", help="How long a batch waits for requests already arriving (5).")
    ] = None,
    max_queue: Annotated[Optional[int], option("--max-queue", help="Texts waiting before 503 (1024).")] = None,
    workers: Annotated[Optional[int], option("--workers", help="Server processes on the one port (1).")] = None,
    api_key_file: Annotated[
        Optional[str], option("--api-key-file", help="File whose first line is the key clients send as a Bearer token.")
    ] = None,
    min_confidence: Annotated[
        Optional[float],
        option("--min-confidence", help="Abstain below this probability, as predict does (0-1).", min=0.0, max=1.0),
    ] = None,
    threads: Threads = None,
    device: Device = None,
    precision: Precision = None,
    config: ConfigFile = None,
    verbosity: Verbosity = None,
) -> None:
    """Serve a trained model over HTTP: POST /v1/predict, a page to try it at /, /metrics, /v1/model, reload."""
    from bertcls.serving.server import serve as run_server

    resolved = build_config(
        config,
        {
            "output_root": output_root,
            "verbosity": verbosity,
            "model.device": device,
            "model.precision": precision,
            "model.num_threads": threads,
            "serve.threads": threads,
            "serve.host": host,
            "serve.port": port,
            "serve.backend": backend,
            "serve.max_batch_size": max_batch_size,
            "serve.max_wait_ms": max_wait_ms,
            "serve.max_queue": max_queue,
            "serve.workers": workers,
            "serve.api_key_file": api_key_file,
            "serve.min_confidence": min_confidence,
        },
    )
    setup_logging(resolved, "serve")
    announce = lambda url: err_console.print(f"Serving on {url} (open it in a browser; Ctrl-C stops)", highlight=False)  # noqa: E731
    run_server(resolved.settings, best_model, announce)
