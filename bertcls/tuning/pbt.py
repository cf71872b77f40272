"""Strategy ``pbt``: a population trained side by side that adapts during training, without restarts.

Each member owns its settings (the study's settings with its own parameters applied). Its best weights are kept
together with the settings that built them, so a member that exploits a donor of another depth or activation
still exports the model its best epoch really had.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bertcls.config.settings import Settings
from bertcls.model.network import set_dropout
from bertcls.runtime.errors import TrainingDiverged
from bertcls.tracking.records import TrackingRecord
from bertcls.tracking.session import TrackedRun
from bertcls.training.convex import ConvexTrainer
from bertcls.training.setup import make_trainer
from bertcls.training.tracking import EpochLogger
from bertcls.training.trainer import Trainer
from bertcls.tuning.pbt_rules import Decision, decide
from bertcls.tuning.search_space import apply, sample, uses_linear_head
from bertcls.tuning.tpe import TuningContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """The state another member may copy: parameters, the settings that built the weights, the trainer's state."""

    params: dict[str, Any]
    settings: Settings
    trainer: dict[str, Any]


@dataclass
class Member:
    index: int
    params: dict[str, Any]
    settings: Settings
    trainer: Trainer
    curve: list[dict[str, float | None]] = field(default_factory=list)  # None: a parameter it does not search
    snapshot: Snapshot | None = None
    best_settings: Settings | None = None  # the settings and parameters that built the best weights so far
    best_params: dict[str, Any] = field(default_factory=dict)
    run: TrackedRun = field(default_factory=TrackedRun.untracked)  # its child run of the study's tracked run
    record: TrackingRecord | None = None  # where that run is tracked, once the member is saved
    diverged: bool = False  # its last epoch's training loss was not finite: its weights are no longer numbers

    def best(self) -> tuple[Settings, dict[str, Any]]:
        """The settings and parameters of the best epoch (the member's own before its first epoch)."""
        return self.best_settings or self.settings, self.best_params or dict(self.params)

    @property
    def last_metric(self) -> float:
        if not self.curve or self.diverged:
            return float("-inf")
        metric = self.curve[-1]["metric"]
        assert metric is not None  # every epoch record has the monitored metric
        return metric

    def note_epoch(self) -> None:
        """After an epoch: if it was the member's best so far, its weights were built by the current settings."""
        if self.trainer.result.best_epoch == self.trainer.state.epoch:
            self.best_settings, self.best_params = self.settings, dict(self.params)


def member_settings(ctx: TuningContext, index: int, params: dict[str, Any]) -> Settings:
    """The study's settings with the member's parameters, no early stopping, and a seed of its own."""
    settings = apply(ctx.settings, params, ctx.settings.early_stopping.model_copy(update={"enabled": False}))
    return settings.model_copy(
        update={"model": settings.model.model_copy(update={"seed": ctx.settings.model.seed + index})}
    )


def new_member(ctx: TuningContext, index: int, params: dict[str, Any]) -> Member:
    """A member with its own settings, trainer and tracked run (its epochs are logged as they finish)."""
    settings = member_settings(ctx, index, params)
    trainer = make_trainer(settings, ctx.features, ctx.service, len(ctx.names))
    run = ctx.tracking.child(f"member-{index}", params, {"bertcls.member": index, "bertcls.strategy": "pbt"})
    trainer.add_callback(EpochLogger(run))
    return Member(index, dict(params), settings, trainer, run=run)


def take_snapshot(member: Member) -> None:
    """The state another member may copy: parameters, the settings that built the weights, and the trainer's state."""
    member.snapshot = Snapshot(dict(member.params), member.settings, member.trainer.state_dict())


def set_hyperparameters(member: Member, params: dict[str, Any]) -> None:
    """New lr, weight decay, dropout and warmup go into the running optimizer, modules and the member's settings (for
    the linear head: its L2 strength)."""
    trainer = member.trainer
    if "linear_l2" in params:
        assert isinstance(trainer, ConvexTrainer)  # only the linear head searches its L2 strength
        trainer.l2 = params["linear_l2"]
        member.settings, member.params = apply(member.settings, params), dict(params)
        return
    head_group = trainer.optimizer.param_groups[0]
    ratio = params["lr"] / head_group["initial_lr"]
    for group in trainer.optimizer.param_groups:
        if group.get("name") == "lexical":  # its rates are lexical.lr and lexical.weight_decay, not searched
            continue
        group["initial_lr"] = params["lr"] if group.get("name") == "head" else group["initial_lr"] * ratio
        group["weight_decay"] = params["weight_decay"]
    set_dropout(trainer.model.head, params["dropout_rate"])
    member.settings = apply(member.settings, params)
    member.params = dict(params)
    trainer.optim_cfg = member.settings.optimizer
    trainer.model.head.spec = trainer.model.head.spec.model_copy(update={"dropout_rate": params["dropout_rate"]})


def exploit(ctx: TuningContext, member: Member, donor: Member) -> None:
    """Become a copy of the donor's saved state: architecture, weights, optimizer state and parameters together.
    The member's run (epoch count, history, best weights and the settings that built them) goes on."""
    snapshot = donor.snapshot
    if snapshot is None:  # the rules pick donors among members with a snapshot
        raise ValueError(f"member {donor.index} has no snapshot to copy")
    seed = {"seed": member.settings.model.seed}
    settings = snapshot.settings.model_copy(update={"model": snapshot.settings.model.model_copy(update=seed)})
    trainer = make_trainer(settings, ctx.features, ctx.service, len(ctx.names))
    trainer.load_state_dict(snapshot.trainer)
    trainer.carry_on_from(member.trainer)
    member.trainer, member.settings, member.params = trainer, settings, dict(snapshot.params)


def apply_decision(ctx: TuningContext, members: list[Member], decision: Decision, epoch: int) -> dict[str, Any]:
    member = members[decision.member]
    if decision.action == "exploit" and decision.source is not None:
        exploit(ctx, member, members[decision.source])
    else:
        set_hyperparameters(member, decision.params)
    event = {
        "epoch": epoch,
        "member": decision.member,
        "action": decision.action,
        "source": decision.source,
        "changes": {k: [float(a), float(b)] for k, (a, b) in decision.changes.items()},
    }
    logger.info(
        "PBT epoch %d: member %d %s%s %s",
        epoch,
        decision.member,
        decision.action,
        f" from member {decision.source}" if decision.source is not None else "",
        event["changes"],
    )
    return event


def replace_diverged(ctx: TuningContext, members: list[Member], epoch: int) -> list[dict[str, Any]]:
    """A member whose training loss became non-finite copies the best healthy member at once (waiting for the next
    perturbation would train NaN weights); when no member is healthy, the population stops in one sentence."""
    diverged = [m for m in members if m.diverged]
    healthy = [m for m in members if not m.diverged and m.snapshot is not None]
    if diverged and not healthy:
        raise TrainingDiverged(
            f"Every PBT member's training loss became non-finite by epoch {epoch}; lower the learning-rate range "
            "(tuning.search_space.lr) and run again."
        )
    events = []
    for member in diverged:
        donor = max(healthy, key=lambda m: m.last_metric)
        logger.warning(
            "PBT member %d diverged in epoch %d (non-finite training loss); it copies member %d.",
            member.index,
            epoch,
            donor.index,
        )
        exploit(ctx, member, donor)
        member.diverged, member.snapshot = False, donor.snapshot  # what others may copy from it: healthy weights
        events.append(
            {"epoch": epoch, "member": member.index, "action": "exploit", "source": donor.index, "changes": {}}
        )
    return events


@dataclass
class PBTOutcome:
    members: list[Member]
    lineage: list[dict[str, Any]]


EpochFn = Callable[[int, list[Member]], None]


def run_population(ctx: TuningContext, on_epoch: EpochFn | None = None) -> PBTOutcome:
    """Train the population for ``num_epochs``; every ``perturbation_interval`` epochs the bottom quantile adapts."""
    cfg, space = ctx.settings.tuning.pbt, ctx.settings.tuning.search_space
    rng = np.random.default_rng(ctx.settings.model.seed)
    members = [
        new_member(ctx, index, sample(rng, space, linear=uses_linear_head(ctx.settings)))
        for index in range(cfg.population_size)
    ]
    lineage: list[dict[str, Any]] = []
    metric = ctx.settings.model.metric
    for epoch in range(1, ctx.settings.model.num_epochs + 1):
        for member in members:
            record = member.trainer.run_epoch()
            if record is None:  # no stop request reaches a population, so every epoch finishes
                raise RuntimeError(f"member {member.index}'s epoch {epoch} did not finish")
            member.note_epoch()
            member.diverged = not math.isfinite(record.train_loss)
            member.curve.append(
                {
                    "epoch": epoch,
                    "metric": getattr(record, metric),
                    "lr": member.params.get("lr"),
                    "linear_l2": member.params.get("linear_l2"),
                    "val_loss": record.val_loss,
                }
            )
            if not member.diverged:
                take_snapshot(member)
        lineage += replace_diverged(ctx, members, epoch)
        if on_epoch:
            on_epoch(epoch, members)
        if epoch % cfg.perturbation_interval == 0 and epoch < ctx.settings.model.num_epochs:
            scores = [m.last_metric for m in members]
            decisions = decide(
                scores, [m.params for m in members], [m.snapshot is not None for m in members], rng, cfg, space
            )
            lineage += [apply_decision(ctx, members, d, epoch) for d in decisions]
    return PBTOutcome(members, lineage)
