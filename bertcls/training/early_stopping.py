"""Early stopping with every criterion of the original; the decision is a pure function."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertcls.config.settings import EarlyStoppingSection


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first values average over what exists so far)."""
    return [float(np.mean(values[max(0, i + 1 - window) : i + 1])) for i in range(len(values))]


def trend_slope(values: list[float]) -> float:
    """Slope of a least-squares line through the values."""
    x = np.arange(len(values), dtype=float)
    return float(np.polyfit(x, np.asarray(values, dtype=float), 1)[0])


def evaluate_stopping(history: list[float], cfg: EarlyStoppingSection, patience: int | None = None) -> tuple[bool, str]:
    """Decide from the metric history (higher is better) whether to stop, and why."""
    if not cfg.enabled or len(history) < max(cfg.min_epochs, 1):
        return False, ""
    patience = cfg.patience if patience is None else patience
    smoothed = smooth(history, cfg.smoothing_window)
    best_index, best = 0, smoothed[0]
    for i, value in enumerate(smoothed[1:], start=1):
        if value > best + cfg.improvement_threshold:
            best_index, best = i, value
    current = smoothed[-1]
    if best > 0 and current < best * (1 - cfg.regression_threshold):
        return (
            True,
            f"regression: smoothed metric {current:.4f} is more than {cfg.regression_threshold:.0%} below "
            f"the best {best:.4f}",
        )
    stale = len(smoothed) - 1 - best_index
    if stale >= patience:
        return (
            True,
            f"no improvement above {cfg.improvement_threshold} in the smoothed metric for {stale} epochs "
            f"(patience {patience})",
        )
    if len(smoothed) >= cfg.trend_window:
        slope = trend_slope(smoothed[-cfg.trend_window :])
        if slope < -cfg.improvement_threshold:
            return True, f"negative trend: slope {slope:.4f} per epoch over the last {cfg.trend_window} epochs"
    return False, ""


@dataclass
class EarlyStopping:
    """Keeps the history and applies :func:`evaluate_stopping` after each epoch."""

    cfg: EarlyStoppingSection
    patience: int | None = None

    def __post_init__(self) -> None:
        self.history: list[float] = []
        self.reason = ""

    def update(self, metric: float) -> bool:
        self.history.append(metric)
        stop, self.reason = evaluate_stopping(self.history, self.cfg, self.patience)
        return stop
