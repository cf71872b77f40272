"""Each early-stopping criterion on synthetic metric sequences."""

from __future__ import annotations

from bertcls.config.settings import EarlyStoppingSection
from bertcls.training.early_stopping import EarlyStopping, evaluate_stopping, smooth, trend_slope

CFG = EarlyStoppingSection(patience=3, min_epochs=2, improvement_threshold=0.001, smoothing_window=1, trend_window=5)


def test_keeps_going_while_improving():
    assert evaluate_stopping([0.5, 0.6, 0.7, 0.8, 0.85, 0.9], CFG) == (False, "")


def test_min_epochs_blocks_an_early_stop():
    cfg = CFG.model_copy(update={"min_epochs": 6})
    assert not evaluate_stopping([0.9, 0.5, 0.5, 0.5, 0.5], cfg)[0]
    assert evaluate_stopping([0.9, 0.5, 0.5, 0.5, 0.5, 0.5], cfg)[0]


def test_patience_on_a_plateau():
    stop, reason = evaluate_stopping([0.5, 0.8, 0.8, 0.8, 0.8], CFG)
    assert stop and "no improvement" in reason and "3 epochs" in reason
    assert not evaluate_stopping([0.5, 0.8, 0.8, 0.8], CFG)[0]


def test_improvements_below_threshold_do_not_count():
    tiny = [0.8, 0.8005, 0.8008, 0.8009]
    assert evaluate_stopping([0.5] + tiny, CFG)[0]
    loose = CFG.model_copy(update={"improvement_threshold": 0.0})
    assert not evaluate_stopping([0.5] + tiny, loose)[0]


def test_patience_uses_the_smoothed_metric():
    cfg = CFG.model_copy(update={"smoothing_window": 3, "patience": 2, "trend_window": 10})
    noisy = [0.5, 0.7, 0.6, 0.72, 0.62, 0.74, 0.64, 0.76]
    assert not evaluate_stopping(noisy, cfg)[0]  # raw values zig-zag, the moving average keeps rising
    assert smooth([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]


def test_regression_more_than_20_percent_below_best():
    cfg = CFG.model_copy(update={"patience": 10})
    stop, reason = evaluate_stopping([0.5, 0.9, 0.7], cfg)
    assert stop and reason.startswith("regression")
    assert not evaluate_stopping([0.5, 0.9, 0.75], cfg)[0]


def test_negative_trend_over_the_window():
    cfg = CFG.model_copy(update={"patience": 10, "regression_threshold": 0.5})
    falling = [0.9, 0.88, 0.86, 0.84, 0.82]
    stop, reason = evaluate_stopping(falling, cfg)
    assert stop and reason.startswith("negative trend")
    assert abs(trend_slope(falling) + 0.02) < 1e-9
    assert not evaluate_stopping([0.8, 0.82, 0.79, 0.83, 0.81], cfg)[0]


def test_disabled_never_stops():
    cfg = CFG.model_copy(update={"enabled": False})
    assert not evaluate_stopping([0.9, 0.1, 0.1, 0.1, 0.1, 0.1], cfg)[0]


def test_stateful_wrapper_records_reason_and_custom_patience():
    stopper = EarlyStopping(CFG, patience=1)
    decisions = [stopper.update(v) for v in (0.5, 0.8, 0.8)]
    assert decisions == [False, False, True] and "patience 1" in stopper.reason
