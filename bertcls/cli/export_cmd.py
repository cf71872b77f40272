"""``bertcls export``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from bertcls.cli.common import (
    BestModel,
    ConfigFile,
    OutputRoot,
    Threads,
    Verbosity,
    build_config,
    err_console,
    option,
    out_console,
    setup_logging,
)
from bertcls.runtime.layout import RunLayout


def export(
    output_root: OutputRoot = None,
    best_model: BestModel = None,
    export_format: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    int8: Annotated[
        bool, typer.Option("--int8/--fp32", help="Quantize the encoder's weights to int8 (dynamic quantization).")
    ] = False,
    data_file: Annotated[
        Optional[str],
        option("--data-file", help="Labelled CSV to check the export on (default: <output_root>/data/val.csv)."),
    ] = None,
    threads: Threads = None,
    config: ConfigFile = None,
    verbosity: Verbosity = None,
) -> None:
    """Export a trained model for ONNX Runtime to <output_root>/export/, checked against torch on labelled data."""
    import torch

    from bertcls.data.labelled import read_labelled_csv, resolve_data_path
    from bertcls.inference.onnx_backend import export_model, require_onnx
    from bertcls.inference.prediction import Predictor
    from bertcls.model.checkpoint import load_named_checkpoint
    from bertcls.runtime.errors import DataError

    resolved = build_config(config, {"output_root": output_root, "verbosity": verbosity, "model.num_threads": threads})
    settings = resolved.settings
    setup_logging(resolved, "export")
    if export_format != "onnx":
        raise DataError(f"Unknown export format {export_format!r}; the only one is onnx.")
    require_onnx()
    root = settings.root
    ckpt = load_named_checkpoint(best_model, root)
    trained = ckpt.trained_settings(root).data
    path = resolve_data_path(data_file, root) if data_file else RunLayout(root).split_file("val")
    if not path.is_file():
        raise DataError(f"No data to check the export on: {path} does not exist; pass --data-file with labelled rows.")
    frame = read_labelled_csv(path, trained)
    frame = frame[frame[trained.text_column].str.strip() != ""]
    if frame.empty:
        raise DataError(f"{path} has no rows with text to check the export on.")
    texts = frame[trained.text_column].tolist()
    truth, _ = ckpt.task.read_truth(frame, trained, ckpt.labels, str(path))
    err_console.print(f"Exporting {ckpt.path.name} and checking it on {len(texts)} texts of {path} ...")
    probs = Predictor(ckpt, root, torch.device("cpu"), "fp32").predict_proba(texts, 64)
    as_predicted = Predictor(ckpt, root, torch.device("cpu"), settings.model.precision)  # timed against the export
    report = export_model(ckpt, root, texts, truth, probs, int8=int8, data=trained, torch_model=as_predicted)
    table = Table(title=f"ONNX export ({'int8' if int8 else 'fp32'}) against torch fp32")
    table.add_column("check")
    table.add_column("value", justify="right")
    checks = report.checks
    table.add_row("texts", f"{int(checks['texts'])}")
    table.add_row("largest probability difference", f"{checks['max_prob_diff']:.2e}")
    table.add_row(f"same {ckpt.task.label_noun} as torch", f"{100 * checks['label_agreement']:.2f}%")
    table.add_row("macro F1 torch / onnx", f"{checks['macro_f1_torch']:.4f} / {checks['macro_f1_onnx']:.4f}")
    speed = report.speed
    if speed is not None:
        table.add_row(f"texts/s torch {speed.torch_precision} / onnx",
                      f"{speed.torch_texts_per_s:.1f} / {speed.onnx_texts_per_s:.1f}")  # fmt: skip
        table.add_row("predict --backend auto uses", speed.faster)
    out_console.print(table)
    from bertcls.model.card import write_card_with_evaluation
    from bertcls.runtime.layout import MODEL_CARD

    write_card_with_evaluation(report.folder / MODEL_CARD, ckpt.meta, ckpt.path, root)
    report.files.append(MODEL_CARD)
    out_console.print(f"Wrote {report.folder} ({', '.join(f for f in report.files if '/' not in f)})", highlight=False)
