"""``bertcls inspect``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.columns import Columns
from rich.panel import Panel
from rich.table import Table

from bertcls.cli.common import BestModel, ConfigFile, OutputRoot, Verbosity, build_config, out_console, setup_logging


def _kv_table(rows: dict[str, Any]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows.items():
        table.add_row(key, "" if value is None else str(value))
    return table


def _count(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def architecture_panel(info: dict) -> Panel:
    arch = info["architecture"]
    keys = (
        "task",
        "encoder",
        "model_type",
        "layers",
        "hidden_size",
        "pooling",
        "normalize",
        "max_seq_len",
        "long_texts",
        "fine_tuned",
        "lexical_features",
        "precision",
        "calibration",
    )
    rows = {k: arch[k] for k in keys}
    kind = "MLP head" if len(arch["head"]) > 1 else "Linear head"
    head = Table(title=f"{kind} (as saved in the checkpoint)", show_edge=False)
    for column in ("layer", "in", "out", "activation", "dropout"):
        head.add_column(column)
    for i, layer in enumerate(arch["head"], start=1):
        head.add_row(
            f"Linear {i}",
            str(layer["in"]),
            str(layer["out"]),
            layer["activation"] or "-",
            "-" if layer["dropout"] is None else f"{layer['dropout']:.2f}",
        )
    grid = Table.grid()
    grid.add_row(_kv_table(rows))
    grid.add_row(head)
    return Panel(grid, title="Architecture")


def history_table(history: list[dict]) -> Table:
    table = Table(title="Training history")
    for column in ("epoch", "train loss", "val loss", "accuracy", "macro F1", "lr", "batch"):
        table.add_column(column, justify="right")
    for r in history:
        table.add_row(
            str(r["epoch"]),
            f"{r['train_loss']:.4f}",
            f"{r['val_loss']:.4f}",
            f"{r['accuracy']:.4f}",
            f"{r['f1']:.4f}",
            f"{r['lr']:.2e}",
            str(r["batch_size"]),
        )
    return table


def results_panel(info: dict) -> Panel:
    rows = {
        f"{split} {name}": f"{value:.4f}"
        for split, values in info["metrics"].items()
        for name, value in values.items()
        if isinstance(value, (int, float))
    }
    rows["best epoch"] = info["best_epoch"]
    rows["stopped"] = info["stop_reason"]
    return Panel(_kv_table(rows), title="Final metrics")


def provenance_panel(info: dict) -> Panel:
    fp = info["encoder_fingerprint"]
    status = (
        "[green]matches[/]" if fp["matches"] else "[red]does NOT match[/]" if fp["local"] else "[red]encoder missing[/]"
    )
    rows = {
        "file": info["file"]["path"],
        "size": f"{info['file']['size_bytes'] / 1e6:.1f} MB",
        "created": info["file"]["created_at"],
        "encoder sha256": fp["recorded"],
        "local encoder": status,
    }
    rows["format version"] = info["file"]["format_version"]
    tuning = info.get("tuning") or {}
    for key in ("study", "strategy", "trial", "member"):
        if tuning.get(key) is not None:
            rows[key] = tuning[key]
    if tuning.get("params"):
        rows["parameters"] = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in tuning["params"].items()
        )
    tracking = info.get("tracking") or {}
    if tracking.get("mlflow_run_id"):
        rows["MLflow run"] = f"{tracking['mlflow_run_id']} (experiment {tracking.get('mlflow_experiment_id')})"
        rows["MLflow tracking URI"] = tracking.get("mlflow_uri")
    if tracking.get("tensorboard_dir"):
        rows["TensorBoard folder"] = tracking["tensorboard_dir"]
    rows.update({f"{name}": version for name, version in info["versions"].items()})
    return Panel(_kv_table(rows), title="File, fingerprint, tracking and versions")


def config_table(config: dict) -> Table:
    from bertcls.config.sources import flatten

    table = Table(title="Training configuration", show_lines=False)
    table.add_column("setting")
    table.add_column("value", overflow="fold")
    for key, value in flatten(config).items():
        if not key.startswith(("tuning.", "evaluation.")):
            table.add_row(key, str(value))
    return table


def label_text(info: dict) -> str:
    """The labels; a multi-label model's with their decision thresholds."""
    if not info.get("thresholds"):
        return ", ".join(info["labels"])
    return ", ".join(f"{label} (>= {t:.3f})" for label, t in info["thresholds"].items())


def render(info: dict) -> None:
    params = info["parameters"]
    counts = {
        "total": _count(params["total"]),
        "trainable": _count(params["trainable"]),
        "frozen": _count(params["frozen"]),
        "head": _count(params["head"]),
        "lexical layer": _count(params["lexical"]),
    }
    out_console.print(architecture_panel(info))
    out_console.print(
        Columns(
            [
                Panel(_kv_table(counts), title="Parameters"),
                Panel(label_text(info), title=f"Labels ({len(info['labels'])})"),
            ]
        )
    )
    out_console.print(history_table(info["history"]))
    out_console.print(results_panel(info))
    out_console.print(config_table(info["config"]))
    out_console.print(provenance_panel(info))


def inspect(
    output_root: OutputRoot = None,
    model: BestModel = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the same content as JSON.")] = False,
    config: ConfigFile = None,
    verbosity: Verbosity = None,
) -> None:
    """Show what a saved model is: architecture, parameters, labels, config, history, metrics, provenance."""
    from bertcls.model.checkpoint import load_named_checkpoint
    from bertcls.model.inspection import describe_checkpoint

    resolved = build_config(config, {"output_root": output_root, "verbosity": verbosity})
    setup_logging(resolved, "inspect")
    root = resolved.settings.root
    ckpt = load_named_checkpoint(model, root)
    info = describe_checkpoint(ckpt, root)
    info["export"] = export_summary(root, ckpt.path)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        render(info)
        if info["export"] is not None:
            out_console.print(export_line(info["export"]), highlight=False)


def export_summary(root, checkpoint) -> dict | None:
    """The ONNX export made from this checkpoint, if any: kind, checks, the measured speeds and what
    ``predict --backend auto`` runs (None without one)."""
    from bertcls.inference.onnx_backend import choose_backend, read_manifest
    from bertcls.runtime.errors import BertclsError
    from bertcls.runtime.layout import RunLayout

    folder = RunLayout(root).export_dir
    try:
        manifest = read_manifest(folder)
    except BertclsError:
        return None
    if manifest.checkpoint != str(checkpoint):
        return None
    backend, why = choose_backend(folder)
    speed = None if manifest.speed is None else manifest.speed.model_dump()
    return {"int8": manifest.int8, "checks": manifest.checks, "speed": speed, "auto_backend": backend, "why": why}


def export_line(export: dict) -> str:
    kind = "int8" if export["int8"] else "fp32"
    speed = export["speed"]
    measured = (
        f"; torch {speed['torch_precision']} {speed['torch_texts_per_s']:.1f} texts/s, ONNX "
        f"{speed['onnx_texts_per_s']:.1f} texts/s"
        if speed
        else ""
    )
    return f"ONNX export ({kind}) of this model{measured}; predict --backend auto runs {export['auto_backend']}."
