"""Strategy ``pbt``: a population trained side by side that adapts during training, without restarts."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from bertcls.model import set_dropout
from bertcls.training import Trainer
from bertcls.tuning.pbt_rules import Decision, decide
from bertcls.tuning.search_space import apply, sample
from bertcls.tuning.tpe import TuningContext
from bertcls.workflow import make_trainer

logger = logging.getLogger(__name__)


@dataclass
class Member:
    index: int
    params: dict[str, Any]
    trainer: Trainer
    curve: list[dict[str, float]] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None

    @property
    def last_metric(self) -> float:
        return self.curve[-1]["metric"] if self.curve else float("-inf")


def build_member(ctx: TuningContext, index: int, params: dict[str, Any]) -> Trainer:
    settings = apply(ctx.settings, params, ctx.settings.early_stopping.model_copy(update={"enabled": False}))
    settings = settings.model_copy(update={"model": settings.model.model_copy(update={"seed": ctx.settings.model.seed + index})})
    return make_trainer(settings, ctx.features, ctx.service, len(ctx.names))


def take_snapshot(member: Member) -> None:
    """The state another member may copy: weights, optimizer state, schedule position and parameters."""
    trainer = member.trainer
    member.snapshot = {
        "params": dict(member.params),
        "model": copy.deepcopy(trainer.model.state_dict()),
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "samples_seen": trainer.samples_seen,
    }


def set_hyperparameters(trainer: Trainer, params: dict[str, Any]) -> None:
    """New lr, weight decay, dropout and warmup go into the running optimizer and modules."""
    head_group = trainer.optimizer.param_groups[0]
    ratio = params["lr"] / head_group["initial_lr"]
    for group in trainer.optimizer.param_groups:
        group["initial_lr"] = params["lr"] if group.get("name") == "head" else group["initial_lr"] * ratio
        group["weight_decay"] = params["weight_decay"]
    set_dropout(trainer.model.head, params["dropout_rate"])
    trainer.optim_cfg = trainer.optim_cfg.model_copy(update={
        "lr": params["lr"], "weight_decay": params["weight_decay"], "warmup_ratio": params["warmup_ratio"]})


def exploit(ctx: TuningContext, member: Member, donor: Member) -> None:
    """Become a copy of the donor's saved state (architecture, weights, optimizer state, parameters)."""
    snapshot = donor.snapshot
    old = member.trainer
    trainer = build_member(ctx, member.index, snapshot["params"])
    trainer.model.load_state_dict(snapshot["model"])
    trainer.optimizer.load_state_dict(snapshot["optimizer"])
    trainer.samples_seen, trainer.epoch, trainer.result, trainer.rng = snapshot["samples_seen"], old.epoch, old.result, old.rng
    trainer.callbacks = old.callbacks
    member.trainer, member.params = trainer, dict(snapshot["params"])


def apply_decision(ctx: TuningContext, members: list[Member], decision: Decision, epoch: int) -> dict[str, Any]:
    member = members[decision.member]
    if decision.action == "exploit":
        exploit(ctx, member, members[decision.source])
    else:
        set_hyperparameters(member.trainer, decision.params)
        member.params = dict(decision.params)
    event = {"epoch": epoch, "member": decision.member, "action": decision.action, "source": decision.source,
             "changes": {k: [float(a), float(b)] for k, (a, b) in decision.changes.items()}}
    logger.info("PBT epoch %d: member %d %s%s %s", epoch, decision.member, decision.action,
                f" from member {decision.source}" if decision.source is not None else "", event["changes"])
    return event


@dataclass
class PBTOutcome:
    members: list[Member]
    lineage: list[dict[str, Any]]
    best: Member


EpochFn = Callable[[int, list[Member]], None]


def run_population(ctx: TuningContext, on_epoch: EpochFn | None = None) -> PBTOutcome:
    """Train the population for ``num_epochs``; every ``perturbation_interval`` epochs the bottom quantile adapts."""
    cfg, space = ctx.settings.tuning.pbt, ctx.settings.tuning.search_space
    rng = np.random.default_rng(ctx.settings.model.seed)
    members = []
    for index in range(cfg.population_size):
        params = sample(rng, space)
        members.append(Member(index, params, build_member(ctx, index, params)))
    lineage: list[dict[str, Any]] = []
    metric = ctx.settings.model.metric
    for epoch in range(1, ctx.settings.model.num_epochs + 1):
        for member in members:
            record = member.trainer.run_epoch()
            member.curve.append({"epoch": epoch, "metric": getattr(record, metric), "lr": member.params["lr"],
                                 "val_loss": record.val_loss})
            take_snapshot(member)
        if on_epoch:
            on_epoch(epoch, members)
        if epoch % cfg.perturbation_interval == 0 and epoch < ctx.settings.model.num_epochs:
            scores = [m.last_metric for m in members]
            decisions = decide(scores, [m.params for m in members], [m.snapshot is not None for m in members], rng, cfg, space)
            lineage += [apply_decision(ctx, members, d, epoch) for d in decisions]
    for member in members:
        member.trainer.restore_best()
    best = max(members, key=lambda m: m.trainer.result.best_metric)
    return PBTOutcome(members, lineage, best)
