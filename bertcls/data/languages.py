"""Which languages a set of texts is in, estimated from common function words (no model, no download): what a
model card states as the languages a model has seen."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

# frequent words that are rare in the other languages listed
FUNCTION_WORDS = {
    "English": "the and of to is that it for you was with on are be this have not but at by from they we",
    "German": "der die und das ist nicht ich sie es zu den mit sich auf für ein eine dem wir auch",
    "French": "le les et des est une que pas pour dans qui sur au avec ce il je vous nous",
    "Spanish": "el los las que y en una es por con para del al lo como pero muy",
    "Portuguese": "os que não uma para com por se dos das mais como mas você",
    "Italian": "il di che per una non sono della del con gli anche come questo",
    "Dutch": "het een en van is dat niet op te zijn met voor er die ik je",
}
WORDS = {language: frozenset(words.split()) for language, words in FUNCTION_WORDS.items()}
_TOKEN = re.compile(r"\w+", re.UNICODE)
_NOT_ASCII = re.compile(r"[^\x00-\x7f]")
_NOT_ASCII_LETTER = re.compile(r"[^A-Za-z]+")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
UNDETERMINED = "undetermined"


def script_of(text: str) -> str | None:
    """The main non-Latin script of a text (e.g. ``Cyrillic``), or None when its letters are mostly Latin (a tie
    goes to the script whose first letter comes first)."""
    if text.isascii():  # every letter is Latin
        return None
    scripts: Counter[str] = Counter()  # in the order of each script's first letter
    latin_ascii = len(_NOT_ASCII_LETTER.sub("", text))
    first_ascii = _ASCII_LETTER.search(text)
    latin_from = first_ascii.start() if first_ascii else len(text)
    for found in _NOT_ASCII.finditer(text):  # only the non-ASCII characters are looked up by name
        if found.start() > latin_from and "LATIN" not in scripts:
            scripts["LATIN"] = 0  # an ASCII letter came first
        char = found.group()
        if char.isalpha():
            name = unicodedata.name(char, "")
            scripts[name.split(" ")[0] if name else "UNKNOWN"] += 1
    if latin_ascii:
        scripts["LATIN"] += latin_ascii
    if not scripts:
        return None
    script, count = scripts.most_common(1)[0]
    if script == "LATIN" or count < sum(scripts.values()) / 2:
        return None
    return f"{script.title()} script"


def language_of(text: str) -> str:
    script = script_of(text)
    if script is not None:
        return script
    tokens = Counter(_TOKEN.findall(text.lower()))
    hits = Counter({language: sum(tokens[word] for word in words) for language, words in WORDS.items()})
    ranked = hits.most_common(2)
    if not ranked or ranked[0][1] < 1 or (len(ranked) > 1 and ranked[1][1] == ranked[0][1]):
        return UNDETERMINED
    return ranked[0][0]


def languages_seen(texts: Sequence[str], limit: int = 2000) -> dict[str, float]:
    """The share of texts per language (up to ``limit`` texts, evenly spaced), largest first."""
    if not texts:
        return {}
    step = max(1, len(texts) // limit)
    sample = texts[::step]
    counts = Counter(language_of(t) for t in sample)
    return {language: round(count / len(sample), 4) for language, count in counts.most_common()}
