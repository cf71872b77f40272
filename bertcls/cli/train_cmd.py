"""``bertcls train``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from bertcls.cli.common import (
    BatchSize,
    ConfigFile,
    DataFile,
    Device,
    Encoding,
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
    option,
    out_console,
    setup_logging,
    task_flags,
    tracking_flags,
)
from bertcls.cli.progress import RichTrainingHooks, new_progress


def metrics_table(metrics: dict[str, dict[str, float]], columns: dict[str, str], title: str = "Metrics") -> Table:
    """One row per split; ``columns``: the task's metric names (key -> title)."""
    table = Table(title=title)
    table.add_column("split")
    for name in columns.values():
        table.add_column(name, justify="right")
    for split, values in metrics.items():
        table.add_row(split, *(f"{values.get(key, float('nan')):.4f}" for key in columns))
    return table


def train(
    output_root: OutputRoot = None,
    config: ConfigFile = None,
    data_file: DataFile = None,
    train_file: Annotated[
        Optional[str], option("--train-file", help="Explicit training CSV (skips the split).")
    ] = None,
    val_file: Annotated[Optional[str], option("--val-file", help="Explicit validation CSV.")] = None,
    test_file: Annotated[Optional[str], option("--test-file", help="Explicit test CSV.")] = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    multi_label: MultiLabel = None,
    label_separator: LabelSeparator = None,
    label_columns: LabelColumns = None,
    min_labels: Annotated[
        Optional[int],
        option(
            "--min-labels",
            help="Multi-label: 1 gives every text at least its most probable label (default 0).",
            min=0,
            max=1,
        ),
    ] = None,
    encoding: Encoding = None,
    on_bad_rows: Annotated[
        Optional[str], option("--on-bad-rows", help="error (default) or drop rows with empty text/label.")
    ] = None,
    on_conflicting_labels: Annotated[
        Optional[str],
        option(
            "--on-conflicting-labels",
            help="A text given different labels: error (default), drop its rows, majority (single-label: the most "
            "frequent label) or union (multi-label: the union of its label sets).",
        ),
    ] = None,
    exclude_rows: Annotated[
        Optional[str],
        option("--exclude-rows", help="CSV with a source_row column (e.g. label_issues.csv): leave those rows out."),
    ] = None,
    num_epochs: Annotated[Optional[int], option("--num-epochs", help="Maximum epochs.")] = None,
    batch_size: BatchSize = None,
    max_seq_len: MaxSeqLen = None,
    lr: Annotated[Optional[float], option("--lr", help="Learning rate of the head.")] = None,
    seed: Annotated[Optional[int], option("--seed", help="Random seed.")] = None,
    metric: Annotated[
        Optional[str],
        option(
            "--metric",
            help="The monitored metric: f1 (macro) or accuracy; multi-label also micro_f1 or samples_f1 "
            "(accuracy is then subset accuracy).",
        ),
    ] = None,
    device: Device = None,
    precision: Precision = None,
    threads: Threads = None,
    encoder: Annotated[Optional[str], option("--encoder", help="Encoder: a local folder or hub id.")] = None,
    freeze: Annotated[
        Optional[bool], option("--freeze/--fine-tune", help="Frozen encoder (cached embeddings) or fine-tuning.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Go on from <output_root>/checkpoints/last_state.pt (same settings and data) after a stop."
        ),
    ] = False,
    track: Track = None,
    tracking_uri: TrackingUri = None,
    run_name: RunName = None,
    verbosity: Verbosity = None,
) -> None:
    """Train a classifier and save <output_root>/best_trials/best_model.pt."""
    resolved = build_config(
        config,
        {
            "output_root": output_root,
            "verbosity": verbosity,
            "data.data_file": data_file,
            "data.train_file": train_file,
            "data.val_file": val_file,
            "data.test_file": test_file,
            "data.text_column": text_column,
            "data.label_column": label_column,
            "data.encoding": encoding,
            "data.on_bad_rows": on_bad_rows,
            "data.on_conflicting_labels": on_conflicting_labels,
            "data.exclude_rows": exclude_rows,
            "model.num_epochs": num_epochs,
            "model.batch_size": batch_size,
            "model.max_seq_len": max_seq_len,
            "model.seed": seed,
            "model.metric": metric,
            "model.device": device,
            "model.precision": precision,
            "model.num_threads": threads,
            "optimizer.lr": lr,
            "encoder.name_or_path": encoder,
            "encoder.freeze": freeze,
            "classifier.min_labels": min_labels,
            **task_flags(multi_label=multi_label, separator=label_separator, columns=label_columns),
            **tracking_flags(track, tracking_uri, run_name),
        },
    )
    settings = resolved.settings
    log_path = setup_logging(resolved, "train")
    from bertcls.tracking.session import open_tracker

    tracker = open_tracker(settings.tracking, settings.root)  # first: its process starts while the rest imports
    from bertcls.runtime.distributed import world
    from bertcls.runtime.interrupts import StopRequest
    from bertcls.runtime.locking import root_lock
    from bertcls.training.workflow import run_training

    progress = new_progress(enabled=settings.verbosity >= 1 and world().is_main)
    hooks = RichTrainingHooks(progress, settings.model.metric, settings.model.num_epochs)
    with root_lock(settings.root, "train"), StopRequest() as stop, progress:
        outcome = run_training(settings, hooks, stop, resume=resume, tracker=tracker)
    if outcome is None:  # another rank of a torchrun launch: rank 0 reports
        return
    out_console.print(metrics_table(outcome.metrics, outcome.task.metric_names, "Best model"))
    result = outcome.result
    out_console.print(f"Stopped: {result.stop_reason}; best epoch {result.best_epoch} of {len(result.history)}.")
    trunc, chunks = outcome.truncation, outcome.chunking
    if chunks:
        reading = (
            f"Texts longer than {settings.model.max_seq_len} tokens: {chunks['chunked']} of {chunks['texts']}, "
            f"read whole as {chunks['windows']} windows in all ({chunks['cut']} cut at encoder.max_chunks)."
        )
    else:
        reading = (
            f"Texts truncated at {settings.model.max_seq_len} tokens: {trunc['truncated']} of {trunc['total']} "
            f"({100 * trunc['fraction']:.1f}%)."
        )
    cache = f"Embedding cache: {outcome.cache_hits} hits, {outcome.cache_misses} new."
    lexical = f" Lexical features: {outcome.lexical_features:,} TF-IDF n-grams." if outcome.lexical_features else ""
    out_console.print(f"{reading} {cache}{lexical}")
    out_console.print(f"Encoder precision: {outcome.precision}.")
    if settings.verbosity >= 2:
        out_console.print(phase_table(outcome.phases))
    if log_path is not None:
        out_console.print(f"Log: {log_path}")
    out_console.print(f"Saved model: [bold]{outcome.checkpoint}[/]", highlight=False)


def phase_table(phases: list[tuple[str, float]]) -> Table:
    """Seconds per stage of the run (``--verbosity 2``); process start and imports come before the first."""
    table = Table(title="Time per stage")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, seconds in phases:
        table.add_row(name, f"{seconds:.2f}")
    table.add_row("[bold]all stages[/]", f"[bold]{sum(s for _, s in phases):.2f}[/]")
    return table
