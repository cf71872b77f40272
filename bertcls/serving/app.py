"""The HTTP application: FastAPI routes over one :class:`LoadedModel` and a :class:`MicroBatcher`.

Every error is a JSON body ``{"error": "<one sentence>"}``: 4xx for a bad request (never a traceback), 401 without
the API key, 503 with ``Retry-After`` when the queue is full, 500 (one sentence, traceback in the log) only when
the model itself failed on a batch."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bertcls.config.settings import Settings
from bertcls.explain.outputs import ExplanationRecord
from bertcls.model.encoder import MAX_TEXT_CHARS
from bertcls.runtime.errors import BertclsError, DataError
from bertcls.runtime.redaction import redact
from bertcls.serving.batching import MicroBatcher, QueueFull
from bertcls.serving.engine import LoadedModel, TextPrediction, load_model
from bertcls.serving.metrics import ServerMetrics
from bertcls.serving.page import PAGE

logger = logging.getLogger(__name__)

# no API key needed: liveness and readiness (for load balancers; they say only the model's file name) and the page
# (static HTML that asks for the key)
OPEN_PATHS = {"/healthz", "/readyz", "/"}
ENDPOINTS = {"/", "/healthz", "/readyz", "/metrics", "/v1/model", "/v1/predict", "/v1/explain", "/v1/reload",
             "/docs", "/openapi.json"}  # fmt: skip


class ServeError(Exception):
    """A response other than 200: its status, one sentence, and headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str]


class PredictResponse(BaseModel):
    model: str
    predictions: list[TextPrediction]


class ExplainRequest(PredictRequest):
    label: str | None = None  # explain this label (default: the predicted label, or labels)
    # integrated-gradients steps per path to start with (default: explain.steps), doubled up to explain.max_steps;
    # more than explain.max_steps is a 422
    steps: int | None = Field(None, ge=2, le=64)


Asked = TypeVar("Asked", bound=PredictRequest)


class ExplainResponse(BaseModel):
    model: str
    score_meaning: str  # what the attributions add up to
    explanations: list[ExplanationRecord]


@dataclass
class ServerState:
    """What the routes share: the settings, the model now served (swapped whole on reload), the key, metrics."""

    settings: Settings
    best_model: str | None
    model: LoadedModel
    api_key: str | None = None
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    batcher: MicroBatcher | None = None
    ready: bool = False
    reload_lock: asyncio.Lock | None = None
    supervised: bool = False  # one of --workers N processes: a reload restarts every worker through the supervisor

    def run_batch(self, texts: list[str]) -> list[tuple[str, TextPrediction]]:
        """One batch on the model served when the batch starts (a reload swaps it for later batches only), each
        prediction with that model's name."""
        model = self.model
        return [(model.name, prediction) for prediction in model.predict(texts)]


def first_problem(exc: ValidationError | RequestValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


async def read_texts(request: Request, state: ServerState) -> list[str]:
    """The request's texts, checked: size of the body, JSON, types, count and length of each text."""
    return (await read_request(request, state, PredictRequest)).texts


async def read_request(request: Request, state: ServerState, schema: type[Asked]) -> Asked:
    """The request body as ``schema``, checked: its size, JSON, types, the count and length of its texts."""
    cfg = state.settings.serve
    declared = request.headers.get("content-length", "")
    too_large = ServeError(413, f"The request body is larger than serve.max_body_bytes ({cfg.max_body_bytes:,} bytes).")
    if declared.isdigit() and int(declared) > cfg.max_body_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cfg.max_body_bytes:
            raise too_large
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServeError(400, f'The request body is not valid JSON ({exc}); send {{"texts": [...]}}.') from None
    except RecursionError:
        raise ServeError(400, 'The request body nests too deeply; send {"texts": [...]}.') from None
    try:
        asked = schema.model_validate(payload)
    except ValidationError as exc:
        raise ServeError(422, f'Invalid request: {first_problem(exc)}; send {{"texts": [...]}}.') from None
    texts = asked.texts
    if not texts:
        raise ServeError(422, "texts is empty; send at least one text.")
    if len(texts) > cfg.max_texts_per_request:
        raise ServeError(
            413, f"A request holds at most {cfg.max_texts_per_request:,} texts (serve.max_texts_per_request); "
            f"this one has {len(texts):,}.",
        )  # fmt: skip
    for number, text in enumerate(texts):
        if len(text) > MAX_TEXT_CHARS:
            raise ServeError(413, f"Text {number} has {len(text):,} characters; the bound is {MAX_TEXT_CHARS:,}.")
    return asked


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": redact(message)}, status_code=status, headers=headers)


def authorised(path: str, authorization: str, key: str | None) -> bool:
    if key is None or path in OPEN_PATHS:
        return True
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


async def reload_model(state: ServerState) -> str:
    """Load the output root's current model beside the served one and swap it in; on failure the old one stays."""
    assert state.reload_lock is not None
    async with state.reload_lock:
        try:
            fresh = await asyncio.to_thread(load_model, state.settings, state.best_model)
        except BertclsError as exc:
            state.metrics.reloads.labels("failed").inc()
            raise ServeError(409, f"The model was not reloaded ({exc}); the old one is still served.") from None
        except Exception as exc:
            state.metrics.reloads.labels("failed").inc()
            logger.exception("Reloading the model failed")
            raise ServeError(
                409, f"The model was not reloaded ({type(exc).__name__}); the old one is still served."
            ) from None
        state.model = fresh
        state.metrics.reloads.labels("done").inc()
        logger.info("Reloaded: now serving %s", fresh.name)
        return fresh.name


def create_app(state: ServerState) -> FastAPI:
    cfg = state.settings.serve

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.batcher = MicroBatcher(
            state.run_batch, cfg.max_batch_size, cfg.max_wait_ms / 1000, cfg.max_queue, state.metrics.observe_batch
        )
        state.batcher.start()
        state.reload_lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # SIGHUP: POSIX, main thread
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload_on_signal(state)))
        state.ready = True
        yield
        state.ready = False
        await state.batcher.stop()

    app = FastAPI(title="bertcls", summary="A trained bertcls text classifier over HTTP.", lifespan=lifespan)
    app.add_middleware(GuardAndMeasure, state=state)
    install_error_handlers(app)
    add_routes(app, state)
    return app


async def reload_on_signal(state: ServerState) -> None:
    with contextlib.suppress(ServeError):  # said in the log; the old model keeps serving
        await reload_model(state)


class GuardAndMeasure:
    """ASGI middleware: the API key check, then the request counters and latency (a plain ASGI class: Starlette's
    ``BaseHTTPMiddleware`` costs every request an extra task and a streamed copy of the response)."""

    def __init__(self, app: ASGIApp, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if authorised(scope["path"], Headers(scope=scope).get("authorization", ""), self.state.api_key):
            await self.app(scope, receive, send_and_note)
        else:
            refusal = error_response(
                401, "This server needs the API key: send Authorization: Bearer <key>.", {"WWW-Authenticate": "Bearer"}
            )
            await refusal(scope, receive, send_and_note)
        path = scope["path"]
        self.state.metrics.observe_request(path if path in ENDPOINTS else "other", status,
                                           time.perf_counter() - started)  # fmt: skip


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(_request: Request, exc: ServeError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, f"Invalid request: {first_problem(exc)}.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(404, f"There is no {request.url.path} here; see /docs for the endpoints.")
        if exc.status_code == 405:
            return error_response(405, f"{request.method} is not allowed on {request.url.path}.")
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        logger.error("Unexpected error", exc_info=exc)
        return error_response(500, f"The server failed on this request ({type(exc).__name__}); see its log.")


def add_routes(app: FastAPI, state: ServerState) -> None:
    schema = {"content": {"application/json": {"schema": PredictRequest.model_json_schema()}}, "required": True}

    @app.post("/v1/predict", response_model=PredictResponse, openapi_extra={"requestBody": schema})
    async def predict(request: Request) -> Response:
        """Labels, calibrated confidence and per-label probabilities for each text, as ``bertcls predict``."""
        batcher = state.batcher
        assert batcher is not None
        batcher.arriving += 1
        try:
            texts = await read_texts(request, state)
        finally:
            batcher.arrived()
        try:
            named = await batcher.submit(texts)
        except QueueFull:
            raise ServeError(
                503, f"The server is busy ({batcher.waiting_texts:,} texts waiting, serve.max_queue "
                f"{batcher.max_queue:,}); retry shortly.", {"Retry-After": "1"},
            ) from None  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the model failed on this batch (logged with its traceback)
            raise ServeError(500, f"The model failed on this request's batch ({type(exc).__name__}).") from None
        answer = PredictResponse.model_construct(model=named[0][0], predictions=[p for _, p in named])
        return Response(answer.model_dump_json(), media_type="application/json")  # built checked, not checked again

    add_explain_route(app, state)

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        """What ``bertcls inspect --json`` says of the served model, with its name and backend."""
        return state.model.info

    @app.post("/v1/reload")
    async def reload() -> JSONResponse:
        """Load the output root's current best model and swap it in; requests in flight finish on the old one.
        Under ``--workers N`` the supervisor restarts the workers one by one with the current model (202)."""
        if state.supervised:
            os.kill(os.getppid(), signal.SIGHUP)
            return JSONResponse({"reloaded": "restarting every worker with the current model"}, status_code=202)
        return JSONResponse({"reloaded": True, "model": await reload_model(state)})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not state.ready:
            return error_response(503, "The model is not loaded yet.")
        return JSONResponse({"status": "ready", "model": state.model.name})

    @app.get("/metrics")
    async def metrics() -> Response:
        if state.batcher is not None:
            state.metrics.queue_texts.set(state.batcher.waiting_texts)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)


def add_explain_route(app: FastAPI, state: ServerState) -> None:
    schema = {"content": {"application/json": {"schema": ExplainRequest.model_json_schema()}}, "required": True}
    one_at_a_time = asyncio.Lock()  # an explanation uses every core it is given: a second request gets 503

    @app.post("/v1/explain", response_model=ExplainResponse, openapi_extra={"requestBody": schema})
    async def explain(request: Request) -> Response:
        """Which words made the model decide, per text: each word's lexical and semantic part of the label's
        score, as ``bertcls explain`` computes them."""
        asked = await read_request(request, state, ExplainRequest)
        limit = state.settings.serve.max_explain_texts
        if len(asked.texts) > limit:
            raise ServeError(413, f"An explain request holds at most {limit} texts (serve.max_explain_texts).")
        if any(not text.strip() for text in asked.texts):
            raise ServeError(422, "A text to explain is empty; send texts with words.")
        model = state.model
        if one_at_a_time.locked():
            raise ServeError(503, "The server is explaining another request; retry shortly.", {"Retry-After": "2"})
        async with one_at_a_time:
            try:
                explained = await asyncio.to_thread(model.explain, asked.texts, asked.label, asked.steps)
            except DataError as exc:  # the request's fault: an unknown label
                raise ServeError(422, str(exc)) from None
            except BertclsError as exc:  # the server's: an ONNX export, an encoder that changed
                raise ServeError(409, str(exc)) from None
        records = [ExplanationRecord.of(explanation) for explanation in explained]
        meaning = model.predictor.task.score_meaning
        answer = ExplainResponse(model=model.name, score_meaning=meaning, explanations=records)
        return Response(answer.model_dump_json(), media_type="application/json")
