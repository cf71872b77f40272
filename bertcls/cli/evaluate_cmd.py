"""``bertcls evaluate``."""

from __future__ import annotations

from typing import Annotated, Optional

from rich.table import Table

from bertcls.cli.common import (
    BestModel,
    ConfigFile,
    DataFile,
    Device,
    Encoding,
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


def evaluate(
    output_root: OutputRoot = None,
    best_model: BestModel = None,
    data_file: DataFile = None,
    cv_folds: Annotated[
        Optional[int], option("--cv-folds", help="Cross-validation folds (default 7; 0 skips).", min=0)
    ] = None,
    encoding: Encoding = None,
    device: Device = None,
    precision: Precision = None,
    threads: Threads = None,
    config: ConfigFile = None,
    verbosity: Verbosity = None,
) -> None:
    """Metrics, k-fold cross-validation, error analysis, plots and report.html in <output_root>/evaluation_results/."""
    import pandas as pd

    from bertcls.checkpoint import load_named_checkpoint
    from bertcls.data import read_labelled_csv, resolve_data_path
    from bertcls.encoder import pick_device
    from bertcls.evaluation.runner import evaluate as run_evaluation

    resolved = build_config(
        config,
        {
            "output_root": output_root,
            "verbosity": verbosity,
            "evaluation.cv_folds": cv_folds,
            "data.encoding": encoding,
            "model.device": device,
            "model.precision": precision,
            "model.num_threads": threads,
        },
    )
    settings = resolved.settings
    setup_logging(resolved, "evaluate")
    root = settings.root
    ckpt = load_named_checkpoint(best_model, root)
    data_cfg = ckpt.trained_settings(root).data.model_copy(update={"encoding": settings.data.encoding})
    if data_file:
        data = read_labelled_csv(resolve_data_path(data_file, root), data_cfg)
        cv_data = data
    else:
        data = read_split(root, "test", data_cfg)
        cv_data = pd.concat([read_split(root, "train", data_cfg), read_split(root, "val", data_cfg)], ignore_index=True)
    data = data[data[data_cfg.text_column].str.strip() != ""].reset_index(drop=True)
    cv_data = cv_data[cv_data[data_cfg.text_column].str.strip() != ""].reset_index(drop=True)
    show = (lambda msg: err_console.print(f"[cyan]{msg}[/]")) if settings.verbosity >= 1 else (lambda msg: None)
    outcome = run_evaluation(
        ckpt, data, cv_data, settings, settings.evaluation.cv_folds, pick_device(settings.model.device), show
    )
    render(outcome)


def read_split(root, name: str, data_cfg):
    """A split that ``train`` wrote under ``<output_root>/data/``."""
    from bertcls.data import read_labelled_csv
    from bertcls.errors import DataError

    path = root / "data" / f"{name}.csv"
    if not path.is_file():
        raise DataError(
            f"No {name} split at {path}; run bertcls train with this --output-root first, or pass --data-file."
        )
    return read_labelled_csv(path, data_cfg)


def render(outcome) -> None:
    table = Table(title=f"Evaluation ({outcome.rows} rows)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in outcome.summary.items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("expected calibration error", f"{outcome.ece:.4f}")
    if outcome.cv is not None:
        mean, std = outcome.cv.iloc[-2], outcome.cv.iloc[-1]
        folds = len(outcome.cv) - 2
        table.add_row(f"CV macro F1 ({folds} folds)", f"{mean['macro_f1']:.4f} ± {std['macro_f1']:.4f}")
        table.add_row(f"CV accuracy ({folds} folds)", f"{mean['accuracy']:.4f} ± {std['accuracy']:.4f}")
    out_console.print(table)
    print_unseen_labels(out_console, outcome.unseen_labels)
    out_console.print(
        f"Wrote {len(outcome.files)} files to {outcome.folder} (open report.html in a browser).", highlight=False
    )
