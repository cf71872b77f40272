"""``bertcls optimize``."""

from __future__ import annotations

import contextlib
from typing import Annotated, Optional

from rich.live import Live
from rich.table import Table

from bertcls.cli.common import (
    ConfigFile,
    DataFile,
    Device,
    LabelColumn,
    LabelColumns,
    LabelSeparator,
    MaxSeqLen,
    MultiLabel,
    OutputRoot,
    Precision,
    RunName,
    TextColumn,
    Threads,
    Track,
    TrackingUri,
    Verbosity,
    build_config,
    err_console,
    option,
    out_console,
    setup_logging,
    task_flags,
    tracking_flags,
)

KEY_PARAMS = ("lr", "batch_size", "num_hidden_layers", "dropout_rate", "activation", "linear_l2")
HEADERS = ("#", "state", "value", "lr", "batch", "layers", "dropout", "act", "l2", "test F1", "s")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-2 else f"{value:.3g}"
    return "" if value is None else str(value)


def trials_table(study, title: str) -> Table:
    table = Table(title=title)
    for column in HEADERS:
        table.add_column(column, justify="left" if column in ("state", "act") else "right", no_wrap=True)
    best = None
    with contextlib.suppress(ValueError):  # no completed trial yet
        best = study.best_trial.number
    for trial in study.get_trials(deepcopy=False):
        duration = trial.duration.total_seconds() if trial.duration else None
        style = "bold green" if trial.number == best else None
        table.add_row(
            str(trial.number),
            trial.state.name.lower(),
            _fmt(trial.value),
            *(_fmt(trial.params.get(k)) for k in KEY_PARAMS),
            _fmt(trial.user_attrs.get("test_f1")),
            _fmt(duration),
            style=style,
        )
    return table


def optimize(
    output_root: OutputRoot = None,
    study_name: Annotated[Optional[str], option("--study-name", help="Study name (resumes if it exists).")] = None,
    n_trials: Annotated[
        Optional[int], option("--n-trials", help="Finished trials the study should hold (all workers together).", min=1)
    ] = None,
    strategy: Annotated[
        Optional[str], option("--strategy", help="tpe (Optuna TPE, default) or pbt (Population Based Training).")
    ] = None,
    storage: Annotated[
        Optional[str],
        option("--storage", help="Optuna storage URL: sqlite:///f.db, postgresql://..., or journal:PATH."),
    ] = None,
    timeout: Annotated[Optional[float], option("--timeout", help="Stop starting new trials after S seconds.")] = None,
    max_seq_len: MaxSeqLen = None,
    num_epochs: Annotated[Optional[int], option("--num-epochs", help="Maximum epochs per trial.")] = None,
    data_file: DataFile = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    multi_label: MultiLabel = None,
    label_separator: LabelSeparator = None,
    label_columns: LabelColumns = None,
    seed: Annotated[Optional[int], option("--seed", help="Random seed.")] = None,
    device: Device = None,
    precision: Precision = None,
    threads: Threads = None,
    config: ConfigFile = None,
    track: Track = None,
    tracking_uri: TrackingUri = None,
    run_name: RunName = None,
    verbosity: Verbosity = None,
) -> None:
    """Tune hyperparameters with Optuna TPE or PBT; the best model lands in <output_root>/best_trials/."""
    resolved = build_config(
        config,
        {
            "output_root": output_root,
            "verbosity": verbosity,
            "tuning.study_name": study_name,
            "tuning.n_trials": n_trials,
            "tuning.strategy": strategy,
            "tuning.storage": storage,
            "tuning.timeout": timeout,
            "model.max_seq_len": max_seq_len,
            "model.num_epochs": num_epochs,
            "data.data_file": data_file,
            "data.text_column": text_column,
            "data.label_column": label_column,
            **task_flags(multi_label=multi_label, separator=label_separator, columns=label_columns),
            "model.seed": seed,
            "model.device": device,
            "model.precision": precision,
            "model.num_threads": threads,
            **tracking_flags(track, tracking_uri, run_name),
        },
    )
    settings = resolved.settings
    setup_logging(resolved, "optimize")
    from bertcls.runtime.distributed import launched

    if launched():
        from bertcls.runtime.errors import DataError

        raise DataError(
            "bertcls optimize does not run under torchrun; start it as a plain command (optimize scales out "
            "through a shared --storage)."
        )
    from bertcls.tracking.session import open_tracker

    tracker = open_tracker(settings.tracking, settings.root)  # first: its process starts while the rest imports
    from bertcls.tuning.runner import OptimizeHooks, run_optimize

    title = f"Study {settings.tuning.study_name} ({settings.tuning.strategy})"
    live = Live(
        Table(title=title),
        console=err_console,
        refresh_per_second=2,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )

    class Hooks(OptimizeHooks):
        def on_stage(self, name: str) -> None:
            if settings.verbosity >= 1:
                live.console.print(f"[cyan]{name}[/]", highlight=False)

        def on_trial_end(self, study, trial) -> None:
            live.update(trials_table(study, title))

        def on_pbt_epoch(self, epoch: int, members: list) -> None:
            table = Table(title=f"{title}: epoch {epoch}")
            for column in ("member", "metric", "best", "lr", "dropout", "layers", "l2"):
                table.add_column(column, justify="right")
            for m in members:
                table.add_row(
                    str(m.index),
                    f"{m.last_metric:.4f}",
                    f"{m.trainer.result.best_metric:.4f}",
                    *(_fmt(m.params.get(k)) for k in ("lr", "dropout_rate", "num_hidden_layers", "linear_l2")),
                )
            live.update(table)

    import optuna

    from bertcls.runtime.locking import root_lock

    optuna.logging.disable_default_handler()  # Optuna's records go through bertcls's handlers (which mask secrets)
    optuna.logging.enable_propagation()

    lock = root_lock(settings.root, "optimize", study=settings.tuning.study_name)
    with lock, live if settings.verbosity >= 1 else _null():
        outcome = run_optimize(settings, Hooks(), tracker)
    out_console.print(trials_table(outcome.study, title))
    summary = Table(title="Best trial")
    summary.add_column("measure")
    summary.add_column("value", overflow="fold")
    summary.add_row("trial", str(outcome.best_trial))
    summary.add_row("task", settings.model.task)
    summary.add_row(f"validation {settings.model.metric}", f"{outcome.best_value:.4f}")
    summary.add_row("test macro F1", _fmt(outcome.test_metrics.get("f1")))
    summary.add_row("parameters", ", ".join(f"{k}={_fmt(v)}" for k, v in outcome.params.items()))
    summary.add_row("trials run by this process", str(outcome.ran_here))
    summary.add_row("storage", outcome.storage)
    summary.add_row("results", str(outcome.folder))
    out_console.print(summary)
    out_console.print(f"Saved model: [bold]{outcome.exp_path}[/] (copied to {outcome.best_path})", highlight=False)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None
