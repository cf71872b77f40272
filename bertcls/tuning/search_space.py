"""The search space: suggest parameters for a trial and apply them to a copy of the settings."""

from __future__ import annotations

from typing import Any

from bertcls.config import EarlyStoppingSection, SearchSpace, Settings

FIRST_HIDDEN_WIDTH = 512
MIN_HIDDEN_WIDTH = 32


def hidden_dims(layers: int) -> list[int]:
    """Head widths for a depth: 512, then halving per layer, never below 32 (2 layers -> [512, 256])."""
    return [max(MIN_HIDDEN_WIDTH, FIRST_HIDDEN_WIDTH // 2**i) for i in range(layers)]


def suggest(trial, space: SearchSpace) -> dict[str, Any]:
    """Ask an Optuna trial for one value of each searched parameter."""
    return {
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_size)),
        "num_hidden_layers": trial.suggest_int("num_hidden_layers", *space.num_hidden_layers),
        "dropout_rate": trial.suggest_float("dropout_rate", *space.dropout_rate),
        "lr": trial.suggest_float("lr", *space.lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay, log=True),
        "warmup_ratio": trial.suggest_float("warmup_ratio", *space.warmup_ratio),
        "activation": trial.suggest_categorical("activation", list(space.activation)),
    }


def distributions(space: SearchSpace) -> dict[str, Any]:
    """The same space as :func:`suggest`, as Optuna distributions (for trials recorded after the fact, e.g. PBT)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    return {
        "batch_size": CategoricalDistribution(list(space.batch_size)),
        "num_hidden_layers": IntDistribution(*space.num_hidden_layers),
        "dropout_rate": FloatDistribution(*space.dropout_rate),
        "lr": FloatDistribution(*space.lr, log=True),
        "weight_decay": FloatDistribution(*space.weight_decay, log=True),
        "warmup_ratio": FloatDistribution(*space.warmup_ratio),
        "activation": CategoricalDistribution(list(space.activation)),
    }


def sample(rng, space: SearchSpace) -> dict[str, Any]:
    """Draw a random point (PBT's initial population), log-uniform where Optuna searches on a log scale."""
    import numpy as np

    log_uniform = lambda low, high: float(np.exp(rng.uniform(np.log(low), np.log(high))))  # noqa: E731
    return {
        "batch_size": int(rng.choice(space.batch_size)),
        "num_hidden_layers": int(rng.integers(space.num_hidden_layers[0], space.num_hidden_layers[1] + 1)),
        "dropout_rate": float(rng.uniform(*space.dropout_rate)),
        "lr": log_uniform(*space.lr),
        "weight_decay": log_uniform(*space.weight_decay),
        "warmup_ratio": float(rng.uniform(*space.warmup_ratio)),
        "activation": str(rng.choice(space.activation)),
    }


def original_early_stopping(trial_number: int, num_epochs: int, base: EarlyStoppingSection) -> EarlyStoppingSection:
    """The original's per-trial early stopping: patience grows with the trial number."""
    return base.model_copy(update={
        "patience": max(3, min(8, trial_number // 2)),
        "min_epochs": max(5, num_epochs // 4),
        "improvement_threshold": 0.001,
        "smoothing_window": 3,
        "trend_window": 5,
    })


def apply(settings: Settings, params: dict[str, Any], stopping: EarlyStoppingSection | None = None) -> Settings:
    """A copy of the settings with the trial's parameters in place."""
    return settings.model_copy(update={
        "model": settings.model.model_copy(update={"batch_size": params["batch_size"]}),
        "classifier": settings.classifier.model_copy(update={
            "hidden_dims": hidden_dims(params["num_hidden_layers"]),
            "dropout_rate": params["dropout_rate"],
            "activation": params["activation"],
        }),
        "optimizer": settings.optimizer.model_copy(update={
            "lr": params["lr"], "weight_decay": params["weight_decay"], "warmup_ratio": params["warmup_ratio"],
        }),
        "early_stopping": stopping or settings.early_stopping,
    })
