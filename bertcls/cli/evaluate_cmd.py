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
    RunName,
    Threads,
    Track,
    TrackingUri,
    Verbosity,
    build_config,
    err_console,
    option,
    out_console,
    print_unseen_labels,
    setup_logging,
    tracking_flags,
)
from bertcls.runtime.layout import RunLayout


def evaluate(
    output_root: OutputRoot = None,
    best_model: BestModel = None,
    data_file: DataFile = None,
    cv_folds: Annotated[
        Optional[int], option("--cv-folds", help="Cross-validation folds (default 7; 0 skips).", min=0)
    ] = None,
    find_label_issues: Annotated[
        Optional[bool],
        option(
            "--find-label-issues/--no-find-label-issues",
            help="Rank likely mislabelled training rows from the cross-validation (label_issues.csv).",
        ),
    ] = None,
    encoding: Encoding = None,
    device: Device = None,
    precision: Precision = None,
    threads: Threads = None,
    config: ConfigFile = None,
    track: Track = None,
    tracking_uri: TrackingUri = None,
    run_name: RunName = None,
    verbosity: Verbosity = None,
) -> None:
    """Metrics, k-fold cross-validation, error analysis, plots and report.html in <output_root>/evaluation_results/."""
    import pandas as pd

    from bertcls.data.labelled import read_labelled_csv, resolve_data_path, with_source_rows
    from bertcls.evaluation.runner import evaluate as run_evaluation
    from bertcls.model.checkpoint import load_named_checkpoint
    from bertcls.model.encoder import pick_device

    resolved = build_config(
        config,
        {
            "output_root": output_root,
            "verbosity": verbosity,
            "evaluation.cv_folds": cv_folds,
            "evaluation.find_label_issues": find_label_issues,
            "data.encoding": encoding,
            "model.device": device,
            "model.precision": precision,
            "model.num_threads": threads,
            **tracking_flags(track, tracking_uri, run_name),
        },
    )
    settings = resolved.settings
    setup_logging(resolved, "evaluate")
    from bertcls.runtime.distributed import launched

    if launched():
        from bertcls.runtime.errors import DataError

        raise DataError(
            "bertcls evaluate does not run under torchrun; start it as a plain command (optimize scales out "
            "through a shared --storage)."
        )
    root = settings.root
    ckpt = load_named_checkpoint(best_model, root)
    data_cfg = ckpt.trained_settings(root).data.model_copy(update={"encoding": settings.data.encoding})
    if data_file:
        data = read_labelled_csv(resolve_data_path(data_file, root), data_cfg)
        data = with_source_rows(data)
        cv_data = data
    else:
        data = read_split(root, "test", data_cfg)
        parts = [read_split(root, name, data_cfg).assign(split=name) for name in ("train", "val")]
        cv_data = pd.concat(parts, ignore_index=True)
    data = data[data[data_cfg.text_column].str.strip() != ""].reset_index(drop=True)
    cv_data = cv_data[cv_data[data_cfg.text_column].str.strip() != ""].reset_index(drop=True)
    show = (lambda msg: err_console.print(f"[cyan]{msg}[/]")) if settings.verbosity >= 1 else (lambda _msg: None)
    from bertcls.runtime.locking import root_lock

    with root_lock(root, "evaluate"):
        outcome = run_evaluation(
            ckpt,
            data,
            cv_data,
            settings,
            settings.evaluation.cv_folds,
            pick_device(settings.model.device),
            show,
            reference=None if data_file else cv_data,  # near-duplicates: training rows against the test split
        )
    render(outcome)


def read_split(root, name: str, data_cfg):
    """A split that ``train`` wrote under ``<output_root>/data/``."""
    from bertcls.data.labelled import read_labelled_csv
    from bertcls.runtime.errors import DataError

    path = RunLayout(root).split_file(name)
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
    trust = outcome.trust
    calibration = trust.calibration.set_index("calibration")
    before, after = calibration.loc["before"], calibration.loc["after"]
    table.add_row("expected calibration error", f"{after.ece:.4f} (before calibration {before.ece:.4f})")
    table.add_row("negative log-likelihood", f"{after.nll:.4f} (before calibration {before.nll:.4f})")
    table.add_row("temperature", f"{after.temperature:.3f}")
    best = trust.threshold
    if outcome.trust.risk_coverage:
        table.add_row(
            "abstain below confidence",
            f"{best.threshold:.3f}: {best.coverage:.1%} of rows kept at accuracy {best.accuracy:.4f}"
            if best is not None
            else "no threshold reaches the target accuracy",
        )
    if trust.label_issues is not None:
        table.add_row("likely label issues", f"{len(trust.label_issues):,} (label_issues.csv)")
    if trust.near_duplicates is not None:
        differing = int(trust.near_duplicates.different_labels.sum())
        table.add_row(
            "near-duplicates train/val vs test",
            f"{len(trust.near_duplicates):,} pairs, {differing:,} with other labels",
        )
    if outcome.cv is not None:
        cv = outcome.cv
        mean, std, folds = cv.mean, cv.std, cv.folds
        for key in ("macro_f1", "micro_f1", "accuracy", "subset_accuracy"):
            if key in mean:
                name = key.replace("_", " ").replace("f1", "F1")
                table.add_row(f"CV {name} ({folds} folds)", f"{mean[key]:.4f} ± {std[key]:.4f}")
    out_console.print(table)
    print_unseen_labels(out_console, outcome.unseen_labels)
    out_console.print(
        f"Wrote {len(outcome.files)} files to {outcome.folder} (open report.html in a browser).", highlight=False
    )
