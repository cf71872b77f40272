"""Faithfulness and cost of ``bertcls explain`` (issue 24) on the BBC and SMS test splits of ``quality.py``.

For each set: the default frozen model is trained on the fixed split (or reused from ``--work``), then ``--texts``
test texts (a seeded sample) are explained for their predicted label with the ``explain:`` settings the flags give
(the defaults: ``expected``, 4 random partial removals, 8 steps per path doubled up to 64 while the gap is over 5%),
once per ``--seeds`` value, and the explanation is checked by deletion:

- comprehensiveness (ERASER, DeYoung et al. 2020): the predicted label's probability drop when the top 10% of the
  words by attribution are removed, per seed, against removing a random 10% (mean of 3 draws) and against LIME's
  top 10% (``lime`` on PyPI, benchmark only) with each of ``--lime-samples`` model calls per text: at 4 x 8 steps
  integrated gradients make 32 forward and backward passes and 5 forward ones (the text and the starts), so 34
  LIME calls are about as many model calls and 100 about as much work; the paired difference per text of the
  first seed to the most-called LIME, with its standard error;
- sufficiency: the share of texts whose prediction stays when only the top 20% of the words are kept;
- completeness: the share of texts whose gap (sum of semantic attributions against the score difference to the
  baseline) is within 5%, at the default steps (with their doubling) and at the fixed steps of ``--steps-grid`` on
  the first ``--grid-texts`` texts;
- cost: seconds per text, and as a ratio to one prediction of the same text in the same run (2 cores, 128 tokens).

    python benchmarks/bench_explain.py [--sets bbc,sms] [--texts 200] [--method expected] [--seeds 0,1,2] [--work DIR]

Not a timed test: run it by hand. Writes benchmarks/results/explain.json (or ``--result``.json;
``--completeness-only``: explain_completeness.json, or ``--result``_completeness.json).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import benchmark_parser, comma_ints, cpu_line, parse_args, save_result, train_on_splits
from quality import make_splits

TOP_REMOVED, TOP_KEPT = 0.10, 0.20


def without(text: str, spans: list[tuple[int, int]]) -> str:
    """The text with the characters of ``spans`` removed."""
    keep, at = [], 0
    for start, end in sorted(spans):
        keep.append(text[at:start])
        at = end
    keep.append(text[at:])
    return "".join(keep)


def spans_of(words, positions) -> list[tuple[int, int]]:
    return [(int(words.starts[i]), int(words.ends[i])) for i in positions]


def lime_scores(explainer, predict, text: str, words, target: int, samples: int) -> np.ndarray:
    """LIME's weight of each word position (a word's weight goes to each of its occurrences)."""
    explanation = explainer.explain_instance(
        text, predict, labels=(target,), num_features=len(words), num_samples=samples
    )
    weights = {word.casefold(): weight for word, weight in explanation.as_list(label=target)}
    return np.array([weights.get(words.word(i).casefold(), 0.0) for i in range(len(words))])


def deletion_scores(predict, text: str, words, scores: np.ndarray, target: int, rng) -> dict[str, float]:
    count = len(words)
    removed = max(1, math.ceil(TOP_REMOVED * count))
    kept = max(1, math.ceil(TOP_KEPT * count))
    order = np.argsort(-scores, kind="stable")
    base = predict([text])[0]
    top_removed = without(text, spans_of(words, order[:removed]))
    only_top = without(text, spans_of(words, order[kept:]))
    randoms = [without(text, spans_of(words, rng.choice(count, removed, replace=False))) for _ in range(3)]
    probs = predict([top_removed, only_top, *randoms])
    return {
        "drop_top": float(base[target] - probs[0, target]),
        "drop_random": float(np.mean([base[target] - p[target] for p in probs[2:]])),
        "kept": bool(probs[1].argmax() == base.argmax()),
    }


@dataclass(frozen=True)
class ExplainedSet:
    """A set's default model (trained on the fixed split under ``--work``, or reused), its explainer, a predict
    function (probabilities, fp32) and the seeded sample of test texts."""

    labels: list[str]
    explainer: Any
    predict: Callable[[list[str]], np.ndarray]
    texts: list[str]


def explained_set(name: str, work: Path, texts: int, explaining: dict[str, Any]) -> ExplainedSet:
    """``explaining``: the ``explain:`` settings to build the explainer with (the defaults where absent)."""
    import torch

    from bertcls.config.settings import ExplainSection
    from bertcls.explain.explainer import Explainer
    from bertcls.inference.prediction import Predictor
    from bertcls.model.checkpoint import load_named_checkpoint
    from bertcls.model.classifier import Classifier

    paths = make_splits(name, work / name)
    root = work / name / "root"
    if not (root / "best_trials" / "best_model.pt").is_file():
        train_on_splits(paths, root)
    ckpt = load_named_checkpoint(None, root)
    predictor = Predictor(ckpt, root, torch.device("cpu"), "fp32")
    explainer = Explainer.configured(Classifier.load(ckpt, root), ExplainSection(**explaining))
    test = pd.read_csv(paths["test"], dtype=str, keep_default_na=False)
    sample = test["text"].sample(n=min(texts, len(test)), random_state=0).tolist()
    return ExplainedSet(ckpt.labels, explainer, lambda rows: predictor.predict_proba(list(rows), 64), sample)


def explaining(args) -> dict[str, Any]:
    """The ``explain:`` settings the flags give (the first seed)."""
    return {
        "method": args.method,
        "steps": args.steps,
        "max_steps": args.max_steps,
        "baselines": args.baselines,
        "seed": args.seeds[0],
    }


def run_set(name: str, work: Path, args) -> dict:
    """Every text explained with each seed (the first seed's explanation is the one compared in full; the others
    give their drop, gap and cost), LIME once per call count."""
    from lime.lime_text import LimeTextExplainer

    chosen = explained_set(name, work, args.texts, explaining(args))
    explainer, predict, texts = chosen.explainer, chosen.predict, chosen.texts
    limes = {calls: LimeTextExplainer(class_names=chosen.labels, random_state=0) for calls in args.lime_samples}
    rng, lime_rng = np.random.default_rng(0), np.random.default_rng(1)  # ours' random draws, whatever LIME runs
    rows = []
    for number, text in enumerate(texts):
        started = time.perf_counter()
        predict([text])
        predict_seconds = time.perf_counter() - started
        row: dict[str, Any] = {}
        for seed in reversed(args.seeds):  # the first seed last, so that its explanation and deletion are kept
            explainer.seed = seed
            started = time.perf_counter()
            explanation = explainer.explain(text)
            seconds = time.perf_counter() - started
            item, words = explanation.explained[0], explanation.words
            target = chosen.labels.index(item.label)
            draws = rng if seed == args.seeds[0] else np.random.default_rng(seed)  # the first seed's: one rng
            ours = deletion_scores(predict, text, words, item.words, target, draws)
            row.update({f"drop_seed_{seed}": ours["drop_top"], f"gap_seed_{seed}": item.gap})
            row.update({f"seconds_seed_{seed}": seconds, f"steps_seed_{seed}": item.steps})
        theirs = {}
        for calls, lime in limes.items():
            lime_words = lime_scores(lime, predict, text, words, target, calls)
            theirs[calls] = deletion_scores(predict, text, words, lime_words, target, lime_rng)
        most = theirs[max(args.lime_samples)]
        rows.append(
            {
                **row,
                "seconds": seconds,
                "predict_seconds": predict_seconds,
                "gap": item.gap,
                "steps": item.steps,
                "drop_top": ours["drop_top"],
                "drop_random": ours["drop_random"],
                "drop_lime": most["drop_top"],
                "kept_top20": ours["kept"],
                "kept_lime20": most["kept"],
                **{f"drop_lime_{samples}": found["drop_top"] for samples, found in theirs.items()},
                "lexical_share": item.lexical_share(),
            }
        )
        if number % 20 == 0:
            print(f"{name}: {number + 1}/{len(texts)} texts, {seconds:.2f} s", flush=True)
    frame = pd.DataFrame(rows)
    grid = steps_grid(explainer, texts[: args.grid_texts], args.steps_grid)
    return {**summarise(frame, grid), "by_seed": by_seed(frame, args.seeds)}


def by_seed(frame: pd.DataFrame, seeds: list[int]) -> dict[str, dict[str, float]]:
    """Per seed of the random removals: the top 10%'s drop, the share within a 5% gap, seconds and steps per text."""
    return {
        str(seed): {
            "comprehensiveness_top10": float(frame[f"drop_seed_{seed}"].mean()),
            "completeness_within_5pct": float((frame[f"gap_seed_{seed}"] <= 0.05).mean()),
            "seconds_per_text": float(frame[f"seconds_seed_{seed}"].mean()),
            "mean_steps": float(frame[f"steps_seed_{seed}"].mean()),
        }
        for seed in seeds
    }


def completeness(name: str, work: Path, args) -> dict:
    """The gaps alone: every text at ``--steps`` (doubled up to ``--max-steps``), then the step grid (the model is
    trained when ``--work`` has none)."""
    chosen = explained_set(name, work, args.texts, explaining(args))
    explainer, texts = chosen.explainer, chosen.texts
    gaps = np.array([explainer.explain(text).explained[0].gap for text in texts])
    return {
        "texts": len(texts),
        "completeness_within_5pct": float(np.mean(gaps <= 0.05)),
        "median_gap": float(np.median(gaps)),
        "steps_grid": steps_grid(explainer, texts[: args.grid_texts], args.steps_grid),
    }


def steps_grid(explainer, texts: list[str], grid: list[int]) -> dict[str, dict[str, float]]:
    """Completeness and cost at other fixed step counts (no doubling; on the first texts), to choose the default."""
    found = {}
    for steps in grid:
        explainer.steps = explainer.max_steps = steps
        gaps, seconds = [], []
        for text in texts:
            started = time.perf_counter()
            gaps.append(explainer.explain(text).explained[0].gap)
            seconds.append(time.perf_counter() - started)
        found[str(steps)] = {
            "within_5pct": float(np.mean(np.array(gaps) <= 0.05)),
            "median_gap": float(np.median(gaps)),
            "seconds_per_text": float(np.mean(seconds)),
        }
    return found


def ratio_to_random(frame: pd.DataFrame) -> float | None:
    """The top words' mean drop over a random 10%'s; None where removing random words does not lower the
    probability on average (no ratio to speak of; the top words' drop is then compared with 0)."""
    random = float(frame.drop_random.mean())
    return float(frame.drop_top.mean()) / random if random > 1e-6 else None


def summarise(frame: pd.DataFrame, grid: dict) -> dict:
    lime_minus_ours = frame.drop_lime - frame.drop_top
    by_samples = {c.removeprefix("drop_lime_"): float(frame[c].mean()) for c in frame if c.startswith("drop_lime_")}
    return {
        "texts": len(frame),
        "comprehensiveness_top10": float(frame.drop_top.mean()),
        "comprehensiveness_random10": float(frame.drop_random.mean()),
        "comprehensiveness_lime10": float(frame.drop_lime.mean()),
        "comprehensiveness_lime10_by_samples": by_samples,
        "lime_minus_ours_mean": float(lime_minus_ours.mean()),
        "lime_minus_ours_se": float(lime_minus_ours.std(ddof=1) / math.sqrt(len(frame))),
        "texts_ours_ahead": int((lime_minus_ours < 0).sum()),
        "texts_lime_ahead": int((lime_minus_ours > 0).sum()),
        "top_vs_random": ratio_to_random(frame),
        "sufficiency_top20_kept": float(frame.kept_top20.mean()),
        "sufficiency_lime20_kept": float(frame.kept_lime20.mean()),
        "completeness_within_5pct": float((frame.gap <= 0.05).mean()),
        "median_gap": float(frame.gap.median()),
        "seconds_per_text": float(frame.seconds.mean()),
        "seconds_per_text_median": float(frame.seconds.median()),
        "mean_steps": float(frame.steps.mean()),
        "ratio_to_predict": float(frame.seconds.sum() / frame.predict_seconds.sum()),
        "lexical_share": float(frame.lexical_share.mean()),
        "steps_grid": grid,
    }


def ratio_cell(ratio: float | None) -> str:
    return "random <= 0" if ratio is None else f"{ratio:.1f}x"


def lime_cell(result: dict) -> str:
    return ", ".join(f"{drop:.3f} ({calls})" for calls, drop in result["comprehensiveness_lime10_by_samples"].items())


def table(results: dict[str, dict], steps: str) -> str:
    lines = [
        "| set | texts | drop top 10% | drop random 10% | top / random | drop LIME top 10% (by calls) | "
        f"kept with top 20% | gap <= 5% ({steps}) | s / text | x one predict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['texts']} | {r['comprehensiveness_top10']:.3f} | {r['comprehensiveness_random10']:.3f} | "
            f"{ratio_cell(r['top_vs_random'])} | {lime_cell(r)} | {r['sufficiency_top20_kept']:.1%} | "
            f"{r['completeness_within_5pct']:.1%} | {r['seconds_per_text']:.2f} | {r['ratio_to_predict']:.0f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--sets", default="bbc,sms")
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=8, help="explain.steps (per path, to start with)")
    parser.add_argument("--max-steps", type=int, default=64, help="explain.max_steps (the doubling's cap)")
    parser.add_argument("--baselines", type=int, default=4, help="explain.baselines (expected)")
    parser.add_argument("--seeds", type=comma_ints, default="0,1,2", help="explain.seed values, each run (expected)")
    parser.add_argument(
        "--lime-samples", type=comma_ints, default="34,100", help="LIME's model calls per text, comma-separated"
    )
    parser.add_argument(
        "--method", choices=("expected", "presence", "embeddings"), default="expected", help="explain.method"
    )
    parser.add_argument("--result", default="explain", help="results file name under benchmarks/results")
    parser.add_argument("--steps-grid", type=comma_ints, default="8,16,32", help="fixed steps per path (no doubling)")
    parser.add_argument("--grid-texts", type=int, default=40)
    parser.add_argument("--work", type=Path, default=None, help="keep the trained models here (reused when present)")
    parser.add_argument(
        "--completeness-only", action="store_true", help="only the gaps (all texts, then the step grid); no deletion"
    )
    args = parse_args(parser)
    import torch

    torch.set_num_threads(2)
    print(cpu_line(), flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-explain-"))
    if args.completeness_only:
        gaps = {name: completeness(name, work, args) for name in args.sets.split(",")}
        save_result(f"{args.result}_completeness", {"cpu": cpu_line(), **explaining(args), **gaps})
        return
    results = {name: run_set(name, work, args) for name in args.sets.split(",")}
    settings = {"cpu": cpu_line(), **explaining(args), "seeds": args.seeds, "lime_samples": args.lime_samples}
    save_result(args.result, {**settings, **results})
    print(cpu_line())
    print(table(results, f"{args.steps} steps, doubled up to {args.max_steps}"))
    print("median seconds per text:", {n: round(r["seconds_per_text_median"], 2) for n, r in results.items()})
    for name, result in results.items():
        print(f"{name} by seed:", result["by_seed"])


if __name__ == "__main__":
    main()
