"""Run the server: check the model and the port first (one sentence and exit 2, before anything listens), then
uvicorn on a socket bound here; with ``workers`` above 1, uvicorn's supervisor runs that many processes on it.

SIGTERM and Ctrl-C stop accepting connections, let the requests in flight finish (at most
``serve.shutdown_timeout_s``) and end the command with 143 or 130. SIGHUP reloads the model."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bertcls.config.settings import Settings
from bertcls.runtime.errors import BertclsError, DataError
from bertcls.runtime.interrupts import Interrupted

logger = logging.getLogger(__name__)

STATE_ENV = "BERTCLS_SERVE_STATE"  # how worker processes get the settings (the key travels on its own)
KEY_ENV = "BERTCLS_SERVE_WORKER_KEY"


def require_serving() -> None:
    """FastAPI, uvicorn and prometheus-client, or one sentence naming the extra to install."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise BertclsError(
            "bertcls serve needs the optional serve extra; install it with pip install -e '.[serve]' "
            "(fastapi, uvicorn, prometheus-client)."
        ) from None


def read_api_key(settings: Settings) -> str | None:
    """``serve.api_key_file`` (its first line) or ``serve.api_key`` (BERTCLS_SERVE__API_KEY); None: no key."""
    cfg = settings.serve
    if cfg.api_key_file:
        path = Path(cfg.api_key_file)
        if not path.is_file():
            raise DataError(f"The API key file {path} does not exist.")
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        key = lines[0].strip() if lines else ""
        if len(key) < 16 or not key.isascii():
            raise DataError(f"The API key file {path} holds no key of at least 16 ASCII characters.")
        return key
    if cfg.api_key is not None:
        key = cfg.api_key.get_secret_value().strip()
        if len(key) < 16 or not key.isascii():
            raise DataError("serve.api_key (BERTCLS_SERVE__API_KEY) must be at least 16 ASCII characters.")
        return key
    return None


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on ``host:port`` (a port in use, or a host that is not this machine's, is one
    sentence before anything is served)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
        raise DataError(f"Port {port} on {host} {reason}; pass another --port (or stop what holds it).") from None
    sock.listen(2048)  # connections made before uvicorn (or a worker) accepts wait here instead of being refused
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, best_model: str | None, on_listening: Callable[[str], None] | None = None) -> None:
    """Load the model (and warm it), bind, then serve until SIGTERM or Ctrl-C."""
    require_serving()
    import uvicorn

    from bertcls.serving.app import ServerState, create_app
    from bertcls.serving.engine import load_model

    cfg = settings.serve
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    key = read_api_key(settings)
    model = load_model(settings, best_model)  # a missing or broken model stops here, before the port is taken
    sock = bind_socket(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    options: dict[str, Any] = {
        "log_level": "warning",
        "timeout_graceful_shutdown": cfg.shutdown_timeout_s,
        "access_log": False,
    }
    if on_listening:
        on_listening(url)
    logger.info("Serving %s on %s (%d worker(s))", model.name, url, cfg.workers)
    if cfg.workers == 1:
        app = create_app(ServerState(settings, best_model, model, key))
        uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[sock])
        return
    del model  # each worker loads its own copy
    os.environ[STATE_ENV] = json.dumps({"settings": settings.model_dump(mode="json"), "best_model": best_model})
    os.environ.pop(KEY_ENV, None)
    if key is not None:
        os.environ[KEY_ENV] = key
    options["timeout_worker_healthcheck"] = WORKER_START_S  # a new worker loads and warms the model first
    config = uvicorn.Config("bertcls.serving.server:worker_app", factory=True, workers=cfg.workers, **options)
    supervisor = _supervisor_class()(config, sockets=[sock])
    supervisor.run()
    if supervisor.stopped_by is not None:  # as one process does: 130 after Ctrl-C, 143 after SIGTERM
        raise Interrupted(supervisor.stopped_by)


WORKER_START_S = 180


def _supervisor_class():
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        """uvicorn's supervisor, remembering which signal stopped it (it returns normally either way)."""

        stopped_by: int | None = None

        def handle_int(self) -> None:
            self.stopped_by = signal.SIGINT
            super().handle_int()

        def handle_term(self) -> None:
            self.stopped_by = signal.SIGTERM
            super().handle_term()

    return Supervisor


def worker_app():
    """The application of one worker process (``--workers`` above 1): settings from the parent, model loaded here."""
    from bertcls.serving.app import ServerState, create_app
    from bertcls.serving.engine import load_model

    state = json.loads(os.environ[STATE_ENV])
    settings = Settings.model_validate(state["settings"])
    if settings.serve.threads:
        import torch

        torch.set_num_threads(settings.serve.threads)
    model = load_model(settings, state["best_model"])
    return create_app(ServerState(settings, state["best_model"], model, os.environ.get(KEY_ENV), supervised=True))
