"""Rich progress bars fed by the core's callbacks."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from bertcls.cli.common import err_console
from bertcls.training.callbacks import WorkflowHooks


def new_progress(*, enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err_console,
        disable=not enabled,
        transient=False,
    )


class RichTrainingHooks(WorkflowHooks):
    """Stages, encoding progress, and per-epoch batches with the live loss and metric."""

    def __init__(self, progress: Progress, metric: str, num_epochs: int):
        self.progress = progress
        self.metric = metric
        self.num_epochs = num_epochs
        self.encode_task: TaskID | None = None
        self.epoch_task: TaskID | None = None
        self.last_metric = ""

    def _say(self, message: str) -> None:
        if not self.progress.disable:
            self.progress.console.print(message, highlight=False)

    def on_stage(self, name: str) -> None:
        self._say(f"[cyan]{name}[/]")

    def on_encode_progress(self, done: int, total: int) -> None:
        if self.encode_task is None:
            self.encode_task = self.progress.add_task("Encoding", total=total, info="texts")
        self.progress.update(self.encode_task, completed=done, total=total)
        if done >= total:
            self.encode_task = None

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        description = f"Epoch {epoch}/{self.num_epochs}"
        if self.epoch_task is None:
            self.epoch_task = self.progress.add_task(description, total=len(trainer.train_data), info="")
        self.progress.reset(
            self.epoch_task, total=len(trainer.train_data), description=description, info=self.last_metric
        )

    def on_batch_end(self, trainer, done: int, total: int, loss: float) -> None:
        if self.epoch_task is None:
            return
        self.progress.update(self.epoch_task, completed=done, info=f"loss {loss:.4f} {self.last_metric}")

    def on_epoch_end(self, trainer, record) -> None:
        value = getattr(record, self.metric)
        self.last_metric = f"val {self.metric} {value:.4f}"
        self._say(
            f"epoch {record.epoch}: train loss {record.train_loss:.4f}  val loss {record.val_loss:.4f}  "
            f"accuracy {record.accuracy:.4f}  macro F1 {record.f1:.4f}"
        )
