"""Ctrl-C and SIGTERM: a first signal asks training to stop after the current step (and save what it has); a second
one aborts at once. Commands exit 130 (SIGINT) or 143 (SIGTERM)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

# what signal.signal returns and takes back
Handler = Callable[[int, FrameType | None], Any] | int | None
SIGNAL_NAMES: dict[int, str] = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Interrupted(Exception):
    """A run stopped by a signal; ``message`` says what was saved. An ``Exception`` (not a KeyboardInterrupt), so
    that Optuna marks the running trial failed and re-raises it, and Typer does not turn it into a silent exit."""

    def __init__(self, signum: int = signal.SIGINT, message: str = ""):
        super().__init__(message)
        self.signum = signum
        self.message = message or f"Interrupted by {SIGNAL_NAMES.get(signum, f'signal {signum}')}."

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class StopRequest:
    """Installed around a training run: the first SIGINT/SIGTERM sets ``signum`` (the trainer polls it after every
    step, the encoder between batches); a second raises :class:`Interrupted` at once.

    Under torchrun a worker gets a terminal's Ctrl-C twice: from the terminal, and again when torchrun forwards it
    (within milliseconds). There, and only there, the same signal within ``FORWARD_WINDOW_S`` counts as that one
    forwarded copy; a plain run has no window, so any second signal stops it at once."""

    FORWARD_WINDOW_S = 0.5

    def __init__(self, *, under_torchrun: bool | None = None) -> None:
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, Handler] = {}
        if under_torchrun is None:
            under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ
        self.repeat_window_s = self.FORWARD_WINDOW_S if under_torchrun else 0.0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            return
        if signum == self.signum and now - self._first_at < self.repeat_window_s:
            return
        raise Interrupted(signum, "Interrupted again: stopped at once; nothing half-written was left behind.")

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def raise_on_signals() -> dict[int, Handler]:
    """Outside training, Ctrl-C and SIGTERM end a command with one sentence (exit 130 or 143); returns the previous
    handlers, to restore."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
