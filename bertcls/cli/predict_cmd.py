"""``bertcls predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bertcls.cli.common import (
    BatchSize,
    BestModel,
    ConfigFile,
    Device,
    Encoding,
    LabelColumn,
    OutputRoot,
    Precision,
    Threads,
    Verbosity,
    build_config,
    err_console,
    option,
    out_console,
    print_unseen_labels,
    setup_logging,
)
from bertcls.cli.common import TextColumn as TextColumnOption
from bertcls.runtime.layout import RunLayout

STDIO = "-"


def count_rows(path: Path) -> int | None:
    """Approximate data rows (line count minus the header), for the progress bar."""
    lines = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            lines += block.count(b"\n")
    return max(0, lines - 1)


def bare_under(name: str, folder: Path) -> Path:
    """An ``--output-file``: a bare file name goes under ``folder`` (of the output root), a path stays as given."""
    path = Path(name)
    return folder / path if len(path.parts) == 1 else path


def resolve_output(name: str, root: Path) -> str:
    """``-`` is stdout; a bare file name goes under ``<output_root>/predictions/``."""
    return STDIO if name == STDIO else str(bare_under(name, RunLayout(root).predictions_dir))


def check_target(target: str) -> None:
    """Refuse an output that cannot be written before any work is done."""
    from bertcls.runtime.errors import DataError

    if target == STDIO:
        return
    path = Path(target)
    if path.is_dir():
        raise DataError(f"The output file {path} is a directory; name a file with --output-file.")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise DataError(f"The output file {path} cannot be created: {parent} is a file, not a folder.")


def rows_per_second(task) -> str:
    speed = task.finished_speed or task.speed
    return f"{speed:,.0f} rows/s" if speed else ""


def predict(
    output_root: OutputRoot = None,
    best_model: BestModel = None,
    data_file: Annotated[Optional[str], option("--data-file", help="CSV to label, or - for standard input.")] = None,
    output_file: Annotated[
        Optional[str],
        option(
            "--output-file",
            help="Output CSV (bare names go under <output_root>/predictions/), or - for standard output.",
        ),
    ] = None,
    batch_size: BatchSize = None,
    top_k: Annotated[
        Optional[int],
        option(
            "--top-k",
            help="Write the top K labels and probabilities instead of one column per class (multi-label: as well).",
            min=1,
        ),
    ] = None,
    escape_formulas: Annotated[
        bool,
        typer.Option(
            "--escape-formulas/--no-escape-formulas", help="Neutralise text cells a spreadsheet would run as formulas."
        ),
    ] = True,
    min_confidence: Annotated[
        Optional[float],
        option(
            "--min-confidence",
            help="Abstain below this top probability (0-1): no predicted_label, abstained=true. Multi-label: per "
            "label, a label decided with less confidence goes to unsure_labels.",
            min=0.0,
            max=1.0,
        ),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="torch (the checkpoint), onnx (the export under <output_root>/export/), or auto: the one export "
            "measured faster on this machine.",
        ),
    ] = "torch",
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Rows read and predicted at a time.", min=1)] = 10_000,
    text_column: TextColumnOption = None,
    label_column: LabelColumn = None,
    encoding: Encoding = None,
    device: Device = None,
    precision: Precision = None,
    threads: Threads = None,
    config: ConfigFile = None,
    verbosity: Verbosity = None,
) -> None:
    """Label a CSV with a trained model: every input column kept, plus predicted_label, confidence, probabilities."""
    from bertcls.data.labelled import check_regular_file, resolve_data_path
    from bertcls.inference.prediction import PredictOptions, predict_csv
    from bertcls.runtime.errors import DataError

    resolved = build_config(
        config,
        {
            "output_root": output_root,
            "verbosity": verbosity,
            "data.text_column": text_column,
            "data.label_column": label_column,
            "data.encoding": encoding,
            "model.device": device,
            "model.precision": precision,
            "model.num_threads": threads,
            "encoder.encode_batch_size": batch_size,  # checked as the setting is (a whole number from 1)
        },
    )
    settings = resolved.settings
    setup_logging(resolved, "predict")
    if not data_file:
        raise DataError("No input given; pass --data-file FILE (or - for standard input).")
    root = settings.root
    if backend not in ("torch", "onnx", "auto"):
        raise DataError(f"Unknown backend {backend!r}; use torch, onnx or auto.")
    if backend == "auto":
        backend = auto_backend(settings.root, best_model)
    predictor, trained = load_predictor(backend, best_model, settings)
    pick = lambda key: getattr(trained if resolved.sources[f"data.{key}"] == "default" else settings.data, key)  # noqa: E731
    options = PredictOptions(
        text_column=pick("text_column"),
        label_column=pick("label_column"),
        encoding=settings.data.encoding,
        batch_size=settings.encoder.encode_batch_size,
        chunk_rows=chunk_size,
        top_k=top_k and min(top_k, len(predictor.labels)),
        escape_formulas=escape_formulas,
        min_confidence=min_confidence,
        label_separator=trained.label_separator,
        label_columns=trained.label_columns,
        trained_label_columns=trained.label_columns or [trained.label_column],
    )
    source = data_file if data_file == STDIO else str(resolve_data_path(data_file, root))
    target = resolve_output(output_file or "predictions.csv", root)
    check_target(target)
    if source != STDIO:
        check_regular_file(Path(source), "Input")
        if target != STDIO and Path(target).resolve() == Path(source).resolve():
            raise DataError(f"--output-file {target} is the input file; write the predictions to another file.")
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]Predicting"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]}"),
        TimeElapsedColumn(),
        console=err_console,
        disable=settings.verbosity < 1,
    )
    with progress:
        task = progress.add_task("predict", total=None if source == STDIO else count_rows(Path(source)), speed="")
        advance = lambda n: progress.update(task, advance=n, speed=rows_per_second(progress.tasks[task]))  # noqa: E731
        summary = predict_csv(predictor, source, target, options, advance)
    console = err_console if target == STDIO else out_console
    report(summary, len(predictor.labels), target, console, predictor.temperature)


def auto_backend(root, best_model: str | None) -> str:
    """``--backend auto``: the backend the export measured faster on this machine; says which, and why."""
    from bertcls.inference.onnx_backend import choose_backend

    chosen, why = choose_backend(RunLayout(root).export_dir, best_model=best_model)
    err_console.print(f"Backend: {chosen} ({why}).", highlight=False)
    return chosen


def load_predictor(backend: str, best_model: str | None, settings):
    """The predictor of the chosen backend, and the data columns its model was trained with."""
    if backend == "onnx":
        from bertcls.config.settings import DataSection
        from bertcls.inference.onnx_backend import OnnxPredictor, stale_export
        from bertcls.runtime.errors import DataError
        from bertcls.runtime.layout import RunLayout

        if best_model:
            raise DataError("--best-model does not apply to --backend onnx, which runs <output_root>/export/.")
        predictor = OnnxPredictor(RunLayout(settings.root).export_dir, settings.model.num_threads)
        manifest = predictor.manifest
        if stale_export(manifest, predictor.folder):
            err_console.print(
                f"[yellow]The export is older than {manifest.checkpoint}; run bertcls export to refresh it.[/]"
            )
        return predictor, DataSection(text_column=manifest.text_column, label_column=manifest.label_column)
    from bertcls.inference.prediction import Predictor
    from bertcls.model.checkpoint import load_named_checkpoint
    from bertcls.model.encoder import pick_device

    ckpt = load_named_checkpoint(best_model, settings.root)
    device = pick_device(settings.model.device)
    return Predictor(ckpt, settings.root, device, settings.model.precision), ckpt.trained_settings(settings.root).data


def report(summary, num_classes: int, target: str, console, temperature: float = 1.0) -> None:
    table = Table(title="Predictions")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("rows", f"{summary.rows:,}")
    table.add_row("empty texts (kept, no prediction)", f"{summary.empty_rows:,}")
    table.add_row("probabilities calibrated with temperature", f"{temperature:.3f}")
    coverage = summary.coverage()
    if coverage is not None:
        kept = len(summary.abstained) - sum(summary.abstained)
        table.add_row(summary.task.coverage_title, f"{coverage:.1%} ({kept:,} {summary.task.kept_rows})")
    metrics = summary.metrics(num_classes)
    if metrics:
        kept_note = " (kept rows)" if coverage is not None else ""
        table.add_row(f"labelled rows scored{kept_note}", f"{metrics['rows']:,}")
        task = summary.task
        for key, name in ((key, task.metric_names[key]) for key in task.prediction_metrics):
            if key in metrics:
                table.add_row(name, f"{metrics[key]:.4f}")
    console.print(table)
    print_unseen_labels(console, summary.unseen_labels)
    if target != STDIO:
        console.print(f"Wrote {target}", highlight=False)
