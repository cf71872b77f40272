"""The training loop. Progress and steering go through callbacks; nothing here knows about the console."""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from bertcls.config.settings import (
    CalibrationSection,
    EarlyStoppingSection,
    LexicalSection,
    ModelSection,
    OptimizerSection,
    Settings,
)
from bertcls.inference.batches import BatchSource, RowSubset, calibrate, predict_proba
from bertcls.model.network import TextClassifier, load_trainable_state, trainable_state
from bertcls.runtime.distributed import SINGLE, Parallel
from bertcls.runtime.errors import TrainingDiverged
from bertcls.runtime.interrupts import StopRequest
from bertcls.runtime.memory import MemoryManager, is_out_of_memory
from bertcls.task.calibration import CalibrationRecord
from bertcls.task.metrics import EpochRecord
from bertcls.training.callbacks import TrainerCallback
from bertcls.training.early_stopping import EarlyStopping
from bertcls.training.lockstep import LockstepEpoch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingPlan:
    """The configuration sections a training run reads."""

    model: ModelSection
    optimizer: OptimizerSection
    early_stopping: EarlyStoppingSection
    lexical: LexicalSection = field(default_factory=LexicalSection)
    calibration: CalibrationSection = field(default_factory=lambda: CalibrationSection(method="none"))
    encoder_lr: float = 2e-5
    precision: str = "fp32"  # what the encoder runs at (fp16 on CUDA needs loss scaling)

    @classmethod
    def of(cls, settings: Settings, precision: str = "fp32") -> TrainingPlan:
        return cls(
            settings.model,
            settings.optimizer,
            settings.early_stopping,
            settings.lexical,
            settings.calibration,
            settings.encoder.encoder_lr,
            precision,
        )


@dataclass
class TrainerState:
    """Where a run is (saved for resume with the weights, optimizer and RNG states)."""

    epoch: int = 0
    samples_seen: int = 0
    interrupted: bool = False  # a stop request fired; the unfinished epoch was dropped
    resumed: bool = False


@dataclass
class TrainerControl:
    """What callbacks may ask of the loop (as transformers' ``TrainerControl``): stop after this epoch."""

    should_stop: bool = False
    stop_reason: str = ""

    def stop(self, reason: str) -> None:
        self.should_stop, self.stop_reason = True, reason


@dataclass
class TrainResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = float("-inf")
    stop_reason: str = "completed all epochs"
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def history_dicts(self) -> list[dict]:
        return [r.model_dump() for r in self.history]


class LogitParts(nn.Module):
    """``model.logit_parts`` as a forward pass (what DistributedDataParallel wraps)."""

    def __init__(self, model: TextClassifier):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model.logit_parts(batch)


def is_better(metric: float, best: TrainResult) -> bool:
    """At least as good as the best so far: on a tie the later, longer-trained epoch wins (small validation sets
    tie often, and with a decaying learning rate the later weights are the settled ones)."""
    return metric >= best.best_metric


def fused_ok(model: nn.Module) -> bool | None:
    """Adam's fused kernel (one pass per parameter instead of a dozen; a 22M-parameter encoder's step drops from
    about 80 ms to 13 ms on 2 CPU cores) where every parameter is a floating-point tensor on a CPU or CUDA device;
    None (torch's default) elsewhere."""
    devices = {p.device.type for p in model.parameters()}
    floating = all(p.is_floating_point() for p in model.parameters())
    return True if floating and devices and devices <= {"cpu", "cuda"} else None


def build_optimizer(
    model: TextClassifier, cfg: OptimizerSection, encoder_lr: float, lexical: LexicalSection | None = None
) -> torch.optim.Optimizer:
    """Separate parameter groups (and learning rates) for the head, the lexical layer and a trainable encoder."""
    groups = [{"params": list(model.head.parameters()), "lr": cfg.head_lr(model.task), "name": "head"}]
    if model.lexical is not None:
        rates = lexical or LexicalSection()
        groups.append(
            {
                "params": list(model.lexical.parameters()),
                "lr": rates.lr,
                "weight_decay": rates.weight_decay,
                "name": "lexical",
            }
        )
    if model.encoder is not None:
        trainable = [p for p in model.encoder.parameters() if p.requires_grad]
        if trainable:
            groups.append({"params": trainable, "lr": encoder_lr, "name": "encoder"})
    for group in groups:
        group["initial_lr"] = group["lr"]
    fused = fused_ok(model)
    kinds = {
        "adamw": lambda: torch.optim.AdamW(groups, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused),
        "adam": lambda: torch.optim.Adam(groups, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused),
        "sgd": lambda: torch.optim.SGD(groups, momentum=cfg.betas[0], weight_decay=cfg.weight_decay),
        "rmsprop": lambda: torch.optim.RMSprop(groups, weight_decay=cfg.weight_decay),
    }
    return kinds[cfg.optimizer_choice]()


def plain_numpy_state() -> dict:
    """numpy's global RNG state with its key as a list (no arrays: a resume file loads with weights_only)."""
    state = np.random.get_state(legacy=False)
    return {**state, "state": {"key": state["state"]["key"].tolist(), "pos": int(state["state"]["pos"])}}


def numpy_state_from_plain(state: dict) -> dict:
    inner = state["state"]
    return {**state, "state": {"key": np.asarray(inner["key"], dtype=np.uint32), "pos": inner["pos"]}}


def schedule_factor(progress: float, warmup_ratio: float) -> float:
    """Linear warmup to 1, then linear decay to 0, as a function of the fraction of training done."""
    if warmup_ratio > 0 and progress < warmup_ratio:
        return progress / warmup_ratio
    return max(0.0, (1.0 - progress) / max(1e-12, 1.0 - warmup_ratio))


class Trainer:
    """Runs epochs over a :class:`BatchSource`, evaluates, stops early and keeps the best weights."""

    def __init__(
        self,
        model: TextClassifier,
        train: BatchSource,
        val: BatchSource,
        plan: TrainingPlan,
        memory: MemoryManager,
        device: torch.device,
        class_weights: np.ndarray | None = None,
        ranks: Parallel = SINGLE,
    ):
        self.model, self.train_data, self.val_data = model.to(device), train, val
        self.num_classes = model.head.spec.num_classes
        self.model_cfg, self.optim_cfg, self.calibration_cfg = plan.model, plan.optimizer, plan.calibration
        self.memory, self.device = memory, device
        self.optimizer = build_optimizer(model, plan.optimizer, plan.encoder_lr, plan.lexical)
        self.stopper = EarlyStopping(plan.early_stopping)
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32, device=device)
        self.loss_fn = model.task.loss(weight)
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        self.scaler = torch.amp.GradScaler("cuda") if plan.precision == "fp16" and device.type == "cuda" else None
        self.callbacks: list[TrainerCallback] = []
        self.state, self.control = TrainerState(), TrainerControl()
        self.rng = np.random.default_rng(plan.model.seed)
        self.result = TrainResult()
        self.calibration = CalibrationRecord()
        self.stop_request: StopRequest | None = None  # polled after every step; given to fit()
        self.parallel = ranks  # several only for fine-tuning under torchrun
        self.parts = ranks.wrap(LogitParts(self.model), device)  # the (head, lexical) logits

    def add_callback(self, callback: TrainerCallback) -> None:
        self.callbacks.append(callback)

    def trigger(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def apply_schedule(self) -> None:
        progress = self.state.samples_seen / max(1, self.model_cfg.num_epochs * len(self.train_data))
        factor = schedule_factor(progress, self.optim_cfg.warmup_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def loss(self, indices: np.ndarray) -> torch.Tensor:
        head, lexical = self.parts(self.train_data.batch(indices, self.device))
        labels = torch.from_numpy(self.train_data.labels[indices]).to(self.device)
        loss = self.loss_fn(head, labels)
        if lexical is not None:  # each view learns to classify alone, and their sum (the output) learns too
            loss = loss + self.loss_fn(lexical, labels) + self.loss_fn(head + lexical, labels)
        return loss

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.optim_cfg.max_grad_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.max_grad_norm)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def _step(self, indices: np.ndarray) -> float:
        self.apply_schedule()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(indices)
        self.backward(loss)
        self.update()
        return float(loss.detach())

    def train_epoch(self) -> float:
        """One pass over the training rows; an out-of-memory step is retried with a halved batch."""
        self.model.train()
        if self.parallel.distributed:
            return LockstepEpoch(self).run()
        order = self.train_data.epoch_order(self.rng, self.memory.batch_size)
        position, losses = 0, []
        while position < len(order):
            indices = order[position : position + self.memory.batch_size]
            try:
                losses.append(self._step(indices) * len(indices))
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                self.memory.on_out_of_memory()
                continue
            position += len(indices)
            self.state.samples_seen += len(indices)
            self.memory.after_step()
            self.trigger("on_batch_end", position, len(order), losses[-1] / len(indices))
            if self.stop_request is not None and self.stop_request.requested:
                self.state.interrupted = True
                break
        return float(sum(losses) / max(1, len(order)))

    def evaluate(self) -> dict[str, float]:
        """Loss, accuracy and macro F1 on the validation split (under torchrun each rank scores its share and the
        probabilities are gathered, so every rank sees the same numbers), under the rule the task would give the
        finished model on these probabilities (a multi-label model's thresholds are tuned on them)."""
        probs = self.parallel.map_sharded(
            lambda part: predict_proba(self.model, part, self.device), self.val_data, take=RowSubset
        )
        labels, task = self.val_data.labels, self.model.task
        return task.score(probs, labels, self.num_classes, task.validation_rule(probs, labels, self.model.rule))

    def run_epoch(self) -> EpochRecord | None:
        """Train and evaluate one epoch, keep the best weights, apply early stopping. An interrupted epoch is
        dropped (None): the run keeps what the finished epochs learned."""
        self.state.epoch += 1
        started = time.perf_counter()
        self.trigger("on_epoch_begin", self.state.epoch)
        train_loss = self.train_epoch()
        if self.state.interrupted:
            self.state.epoch -= 1
            return None
        metrics = self.evaluate()
        record = EpochRecord(
            epoch=self.state.epoch,
            train_loss=train_loss,
            val_loss=metrics["loss"],
            accuracy=metrics["accuracy"],
            f1=metrics["f1"],
            micro_f1=metrics.get("micro_f1"),
            samples_f1=metrics.get("samples_f1"),
            lr=self.optimizer.param_groups[0]["lr"],
            batch_size=self.memory.batch_size,
            seconds=time.perf_counter() - started,
        )
        self.result.history.append(record)
        monitored = metrics[self.model_cfg.metric]
        if math.isfinite(train_loss) and is_better(monitored, self.result):  # NaN weights are never the best
            self.result.best_metric, self.result.best_epoch = monitored, self.state.epoch
            self.result.best_state = trainable_state(self.model)
        stop = self.stopper.update(monitored)
        if self.parallel.broadcast(stop):  # rank 0 decides; every rank follows
            self.control.stop(self.stopper.reason)
        logger.debug("epoch %d: %s", self.state.epoch, record)
        self.trigger("on_epoch_end", record)
        return record

    def fit(self, stop_request: StopRequest | None = None) -> TrainResult:
        """Train until the last epoch, early stopping, a callback's stop or ``stop_request``; then restore the best
        epoch's weights and calibrate."""
        self.stop_request = stop_request
        if not self.state.resumed:  # a resumed run carries on with the RNG states it saved
            torch.manual_seed(self.model_cfg.seed)
        self.trigger("on_train_begin")
        state, control = self.state, self.control
        while state.epoch < self.model_cfg.num_epochs and not control.should_stop and not state.interrupted:
            record = self.run_epoch()
            if record is not None and not math.isfinite(record.train_loss):
                raise TrainingDiverged(
                    f"Training diverged in epoch {record.epoch}: the training loss became {record.train_loss}; "
                    "lower the learning rate (--lr) and train again."
                )
        if state.interrupted:
            self.result.stop_reason = f"interrupted after epoch {state.epoch}"
        elif control.should_stop:
            self.result.stop_reason = control.stop_reason or "stopped by a callback"
        logger.info("Training stopped: %s (best epoch %d)", self.result.stop_reason, self.result.best_epoch)
        self.restore_best()
        self.fit_calibration()
        self.trigger("on_train_end", self.result)
        return self.result

    def fit_calibration(self) -> None:
        """Calibrate the model as it runs now on the validation split (again after its precision changed)."""
        self.calibration = calibrate(self.model, self.val_data, self.device, self.calibration_cfg)

    def state_dict(self) -> dict:
        """A copy of what training has learned so far: weights, optimizer state and the schedule's position."""
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "samples_seen": self.state.samples_seen,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` of a trainer with the same architecture (PBT's exploit)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.state.samples_seen = state["samples_seen"]

    def carry_on_from(self, previous: Trainer) -> None:
        """Take over another trainer's run (epoch count, history, best so far, RNG, callbacks): PBT's exploit gives a
        member another architecture without starting its run again."""
        self.state.epoch, self.result, self.rng = previous.state.epoch, previous.result, previous.rng
        self.callbacks = previous.callbacks

    def resume_state(self) -> dict:
        """Everything a later run needs to continue exactly where this one is (after a finished epoch): weights,
        optimizer state, the schedule's position, every RNG, early stopping, the batch size and the results so
        far. Plain tensors and Python values only, so it loads with ``weights_only=True``."""
        result = self.result
        return {
            "weights": trainable_state(self.model),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "samples_seen": self.state.samples_seen,
            "epoch": self.state.epoch,
            "rng": {
                "numpy": self.rng.bit_generator.state,
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
                "numpy_global": plain_numpy_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "calm_steps": getattr(self.memory, "calm_steps", 0),
            "early_stopping": list(self.stopper.history),
            "batch_size": self.memory.batch_size,
            "result": {
                "history": result.history_dicts(),
                "best_epoch": result.best_epoch,
                "best_metric": result.best_metric,
                "best_state": result.best_state,
            },
        }

    def load_resume_state(self, state: dict) -> None:
        """Continue from :meth:`resume_state` of a run with the same settings and data."""
        load_trainable_state(self.model, state["weights"])
        saved = state["optimizer"]
        if "fused" in self.optimizer.defaults:  # a state saved without the fused kernel would turn it off (and
            # its step counters must be placed for this run's kernel, which load_state_dict reads from the groups)
            groups = [{**group, "fused": self.optimizer.defaults["fused"]} for group in saved["param_groups"]]
            saved = {**saved, "param_groups": groups}
        self.optimizer.load_state_dict(saved)
        self.state.samples_seen, self.state.epoch = state["samples_seen"], state["epoch"]
        self.rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(numpy_state_from_plain(state["rng"]["numpy_global"]))
        if state["rng"].get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if hasattr(self.memory, "calm_steps"):
            self.memory.calm_steps = state.get("calm_steps", 0)
        self.stopper.history = list(state["early_stopping"])
        self.memory.batch_size = state["batch_size"]
        saved = state["result"]
        self.result.history = [EpochRecord(**r) for r in saved["history"]]
        self.result.best_epoch, self.result.best_metric = saved["best_epoch"], saved["best_metric"]
        self.result.best_state = saved["best_state"]
        self.state.resumed = True

    def restore_best(self) -> None:
        if self.result.best_state:
            load_trainable_state(self.model, self.result.best_state)
