"""The search space, defined once as Optuna distributions.

TPE asks a trial for each distribution (:func:`suggest`), PBT draws its first population from the same table
(:func:`sample`) and perturbs within its bounds, and :func:`apply` writes any point into a copy of the settings
through one map from parameter name to settings path (:data:`SETTINGS_PATHS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from bertcls.config.settings import EarlyStoppingSection, SearchSpace, Settings
from bertcls.task import task_for

FIRST_HIDDEN_WIDTH = 512
MIN_HIDDEN_WIDTH = 32


def hidden_dims(layers: int) -> list[int]:
    """Head widths for a depth: 512, then halving per layer, never below 32 (2 layers -> [512, 256])."""
    return [max(MIN_HIDDEN_WIDTH, FIRST_HIDDEN_WIDTH // 2**i) for i in range(layers)]


def uses_linear_head(settings: Settings) -> bool:
    """Whether the settings train the linear head (see ``classifier.head``), whose one searched parameter is its L2
    strength: depth, widths, dropout, activation, learning rate and batch size do not apply to it."""
    return settings.classifier.resolved_head(task_for(settings.model.task), frozen=settings.encoder.freeze) == "linear"


def distributions(space: SearchSpace, *, linear: bool = False) -> dict[str, BaseDistribution]:
    """The searched parameters and their ranges: the single definition of the search space (``linear``: the linear
    head's)."""
    if linear:
        return {"linear_l2": FloatDistribution(*space.linear_l2, log=True)}
    return {
        "batch_size": CategoricalDistribution(list(space.batch_size)),
        "num_hidden_layers": IntDistribution(*space.num_hidden_layers),
        "dropout_rate": FloatDistribution(*space.dropout_rate),
        "lr": FloatDistribution(*space.lr, log=True),
        "weight_decay": FloatDistribution(*space.weight_decay, log=True),
        "warmup_ratio": FloatDistribution(*space.warmup_ratio),
        "activation": CategoricalDistribution(list(space.activation)),
    }


# Where each parameter lands in the settings ("section.field"), and how its value is turned into that field's value.
SETTINGS_PATHS: dict[str, str] = {
    "batch_size": "model.batch_size",
    "num_hidden_layers": "classifier.hidden_dims",
    "dropout_rate": "classifier.dropout_rate",
    "lr": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay",
    "warmup_ratio": "optimizer.warmup_ratio",
    "activation": "classifier.activation",
    "linear_l2": "classifier.linear_l2",
}
CONVERSIONS: dict[str, Callable[[Any], Any]] = {"num_hidden_layers": hidden_dims}


def suggest_value(trial, name: str, dist: BaseDistribution) -> Any:
    """Ask an Optuna trial for one parameter through its public ``suggest_*`` API."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    raise TypeError(f"unsupported distribution {type(dist).__name__} for {name}")


def suggest(trial, space: SearchSpace, *, linear: bool = False) -> dict[str, Any]:
    """Ask an Optuna trial for one value of each searched parameter."""
    return {name: suggest_value(trial, name, dist) for name, dist in distributions(space, linear=linear).items()}


def sample_value(rng: np.random.Generator, dist: BaseDistribution) -> Any:
    """One random draw, uniform on the scale Optuna searches (log-uniform where ``log=True``)."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[int(rng.integers(len(dist.choices)))]
    if isinstance(dist, IntDistribution):
        return int(rng.integers(dist.low, dist.high + 1))
    if isinstance(dist, FloatDistribution):
        if dist.log:
            return float(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
        return float(rng.uniform(dist.low, dist.high))
    raise TypeError(f"unsupported distribution {type(dist).__name__}")


def sample(rng: np.random.Generator, space: SearchSpace, *, linear: bool = False) -> dict[str, Any]:
    """A random point of the space (PBT's initial population)."""
    return {name: sample_value(rng, dist) for name, dist in distributions(space, linear=linear).items()}


def original_early_stopping(trial_number: int, num_epochs: int, base: EarlyStoppingSection) -> EarlyStoppingSection:
    """The original's per-trial early stopping: patience grows with the trial number."""
    return base.model_copy(
        update={
            "patience": max(3, min(8, trial_number // 2)),
            "min_epochs": max(5, num_epochs // 4),
            "improvement_threshold": 0.001,
            "smoothing_window": 3,
            "trend_window": 5,
        }
    )


def apply(settings: Settings, params: dict[str, Any], stopping: EarlyStoppingSection | None = None) -> Settings:
    """A copy of the settings with the parameters in place (each through :data:`SETTINGS_PATHS`)."""
    updates: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        section, field = SETTINGS_PATHS[name].split(".")
        updates.setdefault(section, {})[field] = CONVERSIONS.get(name, lambda v: v)(value)
    sections = {section: getattr(settings, section).model_copy(update=fields) for section, fields in updates.items()}
    if stopping is not None:
        sections["early_stopping"] = stopping
    return settings.model_copy(update=sections)
