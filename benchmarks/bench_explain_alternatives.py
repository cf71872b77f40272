"""Other ways to rank the words (issue 24), the measurements that made expected gradients ``explain``'s default:
on the same test texts and deletion test as ``bench_explain.py`` (the top 10% of the words removed, the predicted
label's probability drop, mean over texts), against LIME at ``--lime-calls`` model calls:

- ``presence``: what ``bertcls explain --method presence`` gives (lexical + semantic parts, ``--steps`` steps; its
  cost is the semantic part's, timed as the alternatives' are);
- ``occlusion``: each word's own drop when it alone is removed (one model call per word);
- ``expected P x S``: expected gradients (Erion et al. 2021) over P baselines that each remove a random share of
  the words (the share uniform, as LIME draws them), S steps each, so P x S steps in all; the attributions add up to
  the score minus the mean score of the P baselines; the gap is the residual over that difference plus the
  lexical words, as ``explain`` reports its own. Run with each of ``--seeds`` (the baselines are random);
- ``coalition P x S``: P paths from removed to present, each through a random partial removal (the share kept
  uniform): the kept words fade in first (S / 2 steps), then the rest (S / 2 steps); unlike expected gradients,
  the attributions add up to the score minus the removed text's, as ``presence``'s do. Seeded the same way.

    python benchmarks/bench_explain_alternatives.py [--set sms] [--texts 200] [--steps 32] [--lime-calls 100,130]
        [--expected 4x8,8x16] [--coalition 8x16,4x16,4x8] [--seeds 0,1,2] [--no-occlusion] [--work DIR] [--result NAME]

Not a timed test: run it by hand. Writes benchmarks/results/explain_alternatives.json (or ``--result``.json); each
LIME call count has its own explainer seeded 0.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_explain import TOP_REMOVED, explained_set, lime_scores, spans_of, without
from common import benchmark_parser, comma_ints, cpu_line, parse_args, save_result


def paths_by_steps(text: str) -> list[tuple[int, int]]:
    """An argparse ``type``: "4x8,8x16" -> [(4, 8), (8, 16)]."""
    return [(int(paths), int(steps)) for paths, steps in (pair.split("x") for pair in text.split(",") if pair)]


def top_removed(text: str, words, scores: np.ndarray) -> str:
    removed = max(1, math.ceil(TOP_REMOVED * len(words)))
    return without(text, spans_of(words, np.argsort(-scores, kind="stable")[:removed]))


def occlusion(predict, text: str, words, target: int) -> np.ndarray:
    probs = predict([text, *(without(text, spans_of(words, [i])) for i in range(len(words)))])
    return probs[0, target] - probs[1:, target]


def random_paths(explainer, text: str, words, target: int, paths: int, rng, legs) -> tuple[np.ndarray, float]:
    """Per word, the semantic attribution averaged over ``paths`` integrations, each drawing a random partial removal
    (a uniform random share of the words kept; a word piece is removed when any word it covers is) and integrating
    ``presence`` along the legs that ``legs(kept, removed, present)`` returns as (start, end, steps); and the mean
    completeness residual (signed)."""
    import torch
    from captum.attr import IntegratedGradients

    from bertcls.explain.semantic import PresenceScores, TokenWindows, word_embeddings

    scores = explainer.scores
    windows = TokenWindows.of(scores.encoder, explainer.classifier.windowing, text)
    with torch.no_grad():
        attributed = IntegratedGradients(PresenceScores(scores, windows, word_embeddings(scores, windows)))
    inside = windows.pieces >= 0
    covered = [words.covering(*span) for span in windows.spans]
    ones = torch.ones(1, windows.ids.numel())
    removed = torch.from_numpy(np.where(inside, 0.0, 1.0).reshape(1, -1)).float()
    pieces, residual = np.zeros(len(windows.spans)), 0.0
    for _ in range(paths):
        kept_words = rng.random(len(words)) < rng.random()
        piece_kept = np.array([bool(kept_words[words_of].all()) for words_of in covered])
        kept = np.ones(windows.pieces.shape)
        kept[inside] = piece_kept[windows.pieces[inside]]
        for start, end, steps in legs(torch.from_numpy(kept.reshape(1, -1)).float(), removed, ones):
            if torch.equal(start, end):
                continue
            attribution, delta = attributed.attribute(
                end,
                baselines=start,
                target=target,
                n_steps=steps,
                internal_batch_size=32,
                return_convergence_delta=True,
            )
            per_position = attribution.reshape(windows.pieces.shape).detach().numpy()
            np.add.at(pieces, windows.pieces[inside], per_position[inside])
            residual += float(delta)
    on_words = np.zeros(len(words))
    for value, span in zip(pieces / paths, windows.spans, strict=True):
        words.spread(on_words, *span, value)
    return on_words, residual / paths


def expected_gradients(
    explainer, text: str, words, target: int, paths: int, steps: int, rng
) -> tuple[np.ndarray, float]:
    """Expected gradients: from each random partial removal to the text, ``steps`` steps."""
    return random_paths(explainer, text, words, target, paths, rng, lambda kept, _, present: [(kept, present, steps)])


def coalition_paths(explainer, text: str, words, target: int, paths: int, steps: int, rng) -> tuple[np.ndarray, float]:
    """Random-coalition paths: from removed to each random partial removal S (S's word pieces fade in), then to the
    text (the others fade in), ``steps // 2`` steps each; each path adds up to the score minus the removed text's,
    as ``presence`` does."""
    half = max(1, steps // 2)
    return random_paths(
        explainer,
        text,
        words,
        target,
        paths,
        rng,
        lambda kept, removed, present: [(removed, kept, half), (kept, present, half)],
    )


def semantic_seconds(explainer, text: str, target: int) -> float:
    """The time of ``explain``'s semantic part alone (windows, both ends, integrated gradients), as the alternatives
    are timed."""
    from bertcls.explain.semantic import TokenWindows, endpoints, semantic_part

    started = time.perf_counter()
    windows = TokenWindows.of(explainer.scores.encoder, explainer.classifier.windowing, text)
    semantic_part(explainer.scores, windows, endpoints(explainer.scores, windows, "presence"), target, explainer.steps)
    return time.perf_counter() - started


def run(args, work: Path) -> dict:
    from lime.lime_text import LimeTextExplainer

    chosen = explained_set(
        args.set, work, args.texts, {"method": "presence", "steps": args.steps, "max_steps": args.steps}
    )
    explainer, predict, texts = chosen.explainer, chosen.predict, chosen.texts
    limes = {calls: LimeTextExplainer(class_names=chosen.labels, random_state=0) for calls in args.lime_calls}
    removed: dict[str, list[str]] = {}
    gaps: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    variants = {  # name -> the ranking, its paths and steps, and its own random draws
        f"{kind} {count}x{steps} seed {seed}": (ranking, count, steps, np.random.default_rng(seed))
        for kind, ranking, sizes in (
            ("expected", expected_gradients, args.expected),
            ("coalition", coalition_paths, args.coalition),
        )
        for count, steps in sizes
        for seed in args.seeds
    }
    targets = []
    for number, text in enumerate(texts):
        explanation = explainer.explain(text)
        item, words = explanation.explained[0], explanation.words
        target = chosen.labels.index(item.label)
        seconds["presence"] = seconds.get("presence", 0.0) + semantic_seconds(explainer, text, target)
        targets.append(target)
        ranked = {"presence": item.words}
        if args.occlusion:
            ranked["occlusion"] = occlusion(predict, text, words, target)
        for calls, lime in limes.items():
            ranked[f"LIME {calls} calls"] = lime_scores(lime, predict, text, words, target, calls)
        gaps.setdefault("presence", []).append(item.gap)
        for name, (ranking, count, steps, rng) in variants.items():
            started = time.perf_counter()
            semantic, residual = ranking(explainer, text, words, target, count, steps, rng)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
            ranked[name] = semantic + item.lexical
            explained = abs(semantic.sum() - residual) + abs(item.lexical.sum())  # the score minus the start's
            gaps.setdefault(name, []).append(abs(residual) / max(explained, 1e-3))
        for name, values in ranked.items():
            removed.setdefault(name, []).append(top_removed(text, words, np.asarray(values)))
        if number % 20 == 0:
            print(f"{args.set}: {number + 1}/{len(texts)} texts", flush=True)
    base = predict(texts)[np.arange(len(texts)), targets]
    found = {}
    for name, cut in removed.items():
        drops = base - predict(cut)[np.arange(len(texts)), targets]
        found[name] = {
            "drop_top10": float(drops.mean()),
            "within_5pct": float(np.mean(np.array(gaps[name]) <= 0.05)) if name in gaps else None,
            "seconds_per_text": seconds[name] / len(texts) if name in seconds else None,
        }
    return found


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--set", default="sms")
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--lime-calls", type=comma_ints, default="100")
    parser.add_argument("--coalition", type=paths_by_steps, default="", help="paths x steps, comma-separated")
    parser.add_argument(
        "--expected", type=paths_by_steps, default="4x8,8x16", help="baselines x steps, comma-separated"
    )
    parser.add_argument("--seeds", type=comma_ints, default="0,1,2")
    parser.add_argument("--no-occlusion", dest="occlusion", action="store_false", help="skip it (a call per word)")
    parser.add_argument("--result", default="explain_alternatives", help="results file name under benchmarks/results")
    parser.add_argument("--work", type=Path, default=None, help="keep the trained model here (reused when present)")
    args = parse_args(parser)
    import torch

    torch.set_num_threads(2)
    print(cpu_line(), flush=True)
    found = run(args, args.work or Path(tempfile.mkdtemp(prefix="bench-explain-alt-")))
    save_result(args.result, {"cpu": cpu_line(), "set": args.set, "texts": args.texts, **found})
    print(cpu_line())
    print("| ranking | drop, top 10% | gap <= 5% | s / text |\n|---|---:|---:|---:|")
    for name, row in found.items():
        within = "-" if row["within_5pct"] is None else f"{row['within_5pct']:.0%}"
        cost = "-" if row["seconds_per_text"] is None else f"{row['seconds_per_text']:.2f}"
        print(f"| {name} | {row['drop_top10']:.4f} | {within} | {cost} |")


if __name__ == "__main__":
    main()
