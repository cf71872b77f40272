"""The explanations as a page a person reads: each text with its words highlighted by sign and strength, the label
and probability, and the lexical/semantic split. Self-contained (no scripts, fonts or links: it works offline);
:func:`explanation_html` is also what ``evaluate`` puts in ``report.html``."""

from __future__ import annotations

from collections.abc import Collection
from html import escape

import numpy as np

from bertcls.explain.explainer import Explanation, LabelExplanation
from bertcls.explain.outputs import ExplainedText, top_words

STYLE = """
.xpl { background:#fff; border:1px solid #e1e4ea; border-radius:8px; padding:.8rem 1rem; margin:0 0 1rem; }
.xpl h3 { font-size:1rem; margin:.1rem 0 .4rem; }
.xpl .meta { color:#5a6272; font-size:.85rem; margin-bottom:.4rem; }
.xpl .split { display:flex; height:.55rem; border-radius:4px; overflow:hidden; margin:.3rem 0 .6rem; max-width:24rem; }
.xpl .split .lex { background:#8e6bd8; } .xpl .split .sem { background:#3d8fd1; }
.xpl .words { line-height:1.9; white-space:pre-wrap; }
.xpl .w { border-radius:3px; padding:0 1px; }
.xpl .unread { text-decoration:underline dotted #9aa1ad; }
.xpl .flag { color:#b42318; font-weight:600; }
.xpl .top { font-size:.85rem; margin-top:.4rem; } .xpl .top b { font-weight:600; }
.xpl-legend span { padding:0 .3rem; border-radius:3px; }
"""


def _colour(value: float, scale: float) -> str:
    strength = 0.0 if scale <= 0 else min(1.0, abs(value) / scale) * 0.85
    rgb = "22,163,74" if value > 0 else "220,38,38"
    return f"rgba({rgb},{strength:.3f})"


def highlighted(explanation: Explanation, item: LabelExplanation) -> str:
    """The text as HTML, each word's background green (raises the score) or red (lowers it), by strength."""
    words, text = explanation.words, explanation.text
    scale = float(np.abs(item.words).max()) if len(item.words) else 0.0
    parts, at = [], 0
    for index in range(len(words)):
        start, end = int(words.starts[index]), int(words.ends[index])
        parts.append(escape(text[at:start]))
        value = float(item.words[index])
        tip = f"lexical {item.lexical[index]:+.3f}, semantic {item.semantic[index]:+.3f}"
        unread = " unread" if start >= explanation.read_until else ""
        parts.append(
            f'<span class="w{unread}" style="background:{_colour(value, scale)}" title="{tip}" '
            f'data-score="{value:.6f}">{escape(text[start:end])}</span>'
        )
        at = end
    parts.append(escape(text[at:]))
    return "".join(parts)


def _split_bar(item: LabelExplanation) -> str:
    lexical = round(100 * item.lexical_share())
    return (
        f'<div class="split" title="lexical {lexical}% / semantic {100 - lexical}% of the words\' attribution">'
        f'<div class="lex" style="width:{lexical}%"></div><div class="sem" style="width:{100 - lexical}%"></div></div>'
    )


def explanation_html(entry: ExplainedText, heading: str | None = None) -> str:
    """One text's explanation (every label explained) as a block of HTML."""
    explanation = entry.explanation
    blocks = []
    for item in explanation.explained:
        where = heading or (f"Row {entry.source_row}" if entry.source_row is not None else "Text")
        truth = f" &middot; true label {escape(entry.truth)}" if entry.truth else ""
        flag = (
            f' &middot; <span class="flag">completeness gap {item.gap:.1%}: approximate</span>' if item.flagged else ""
        )
        positive, negative = top_words(explanation, item)
        unread = (
            '<div class="meta">Dotted words come after what the encoder reads; only the lexical part sees them.</div>'
            if explanation.read_until < len(explanation.text.rstrip())
            else ""
        )
        blocks.append(
            f'<div class="xpl" data-label="{escape(item.label)}" data-gap="{item.gap:.6f}">'
            f"<h3>{escape(where)}: {escape(item.label)} ({item.probability:.1%}){truth}</h3>"
            f'<div class="meta">score {item.score:+.3f} = base {item.base:+.3f} + lexical words '
            f"{item.lexical_total:+.3f} + semantic words {item.semantic_total:+.3f} &middot; completeness gap "
            f"{item.gap:.2%}{flag}</div>"
            f"{_split_bar(item)}{unread}"
            f'<div class="words">{highlighted(explanation, item)}</div>'
            f'<div class="top"><b>For:</b> {escape(positive) or "none"}<br><b>Against:</b> '
            f"{escape(negative) or 'none'}</div></div>"
        )
    return "\n".join(blocks)


BASELINES = {
    "expected": "expected gradients: integrated gradients over each word piece's presence, from each of a few random "
    "partial removals of the words to the text, averaged",
    "presence": "integrated gradients over each word piece's presence, from the text with its words removed",
    "embeddings": "integrated gradients over the input embeddings, from the text with [PAD] in place of its words",
}


def legend(meaning: str, methods: Collection[str]) -> str:
    """The page's key: colours, the score's meaning, the two parts, and the semantic part's method(s) and base."""
    how = "; ".join(f"{escape(BASELINES.get(m, m))} (<code>{escape(m)}</code>)" for m in sorted(methods))
    return (
        '<span class="xpl-legend">Words in <span style="background:rgba(22,163,74,.6)">green</span> raise the label\'s '
        'score, words in <span style="background:rgba(220,38,38,.6)">red</span> lower it; stronger colour, larger '
        f"effect (hover a word for its lexical and semantic parts). The score is {escape(meaning)}. The bar shows "
        'the share of the <span style="background:#8e6bd8;color:#fff">lexical</span> part (TF-IDF n-grams, exact) '
        'and of the <span style="background:#3d8fd1;color:#fff">semantic</span> part, '
        f"{how or 'integrated gradients through the encoder'}. Base: what no word carries (the score at the "
        "starting text, the mean over the random ones for expected gradients, plus the lexical layer's bias).</span>"
    )


def render_page(entries: list[ExplainedText], model: str, meaning: str) -> str:
    body = "\n".join(explanation_html(entry) for entry in entries)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>bertcls explanations</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 60rem;
       padding: 0 1rem; color: #1d2330; background: #fafbfc; }}
h1 {{ font-size: 1.4rem; }}
{STYLE}
</style></head><body>
<h1>Why the model decided</h1>
<p class="meta">Model: {escape(model)} &middot; {len(entries)} text(s)</p>
<p>{legend(meaning, {entry.explanation.method for entry in entries})}</p>
{body}
</body></html>
"""
