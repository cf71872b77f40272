"""``bertcls explain``: exact lexical contributions, integrated gradients that add up, the planted word found first,
both tasks, long texts read as windows, the CSV and the page (in a real browser), the server's /v1/explain, the
evaluation report, and every bad input."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from bertcls.config.settings import LexicalSection
from bertcls.explain.explainer import MAX_GAP, Explainer
from bertcls.explain.lexical import lexical_part
from bertcls.explain.semantic import additive_mask
from bertcls.explain.words import Words
from bertcls.features.lexical import LexicalFeatures
from bertcls.model.checkpoint import load_named_checkpoint
from bertcls.model.classifier import Classifier
from bertcls.model.encoder import Windowing
from tests.conftest import assert_explained, read_csv, thread_subset


@pytest.fixture(scope="module")
def explainer(trained_model) -> Explainer:
    return Explainer(Classifier.load(load_named_checkpoint(None, trained_model), trained_model), steps=16)


def test_lexical_contributions_match_a_hand_computation():
    texts = ["free prize now", "call me now", "prize draw free", "now or never"]
    features = LexicalFeatures.fit(texts, LexicalSection(word_ngrams=(1, 2), min_df=1))
    weight = np.random.default_rng(0).normal(size=(features.spec.num_features, 2))
    text = "Free prize, now free!"
    words = Words.of(text)
    assert [words.word(i) for i in range(len(words))] == ["Free", "prize", ",", "now", "free", "!"]
    part = lexical_part(features, weight, np.array([0.5, -0.5]), text, words)[0]
    row = features.transform([text]).toarray()[0]
    column = features.vectorizers["word"].vocabulary_
    value = lambda term: row[column[term]] * weight[column[term], 0]  # noqa: E731
    expected = np.zeros(len(words))
    expected[[0, 4]] += value("free") / 2  # two occurrences share the unigram's contribution
    expected[1] += value("prize")
    expected[3] += value("now")
    expected[[0, 1]] += value("free prize") / 2  # a bigram's contribution goes half to each of its words
    expected[[1, 3]] += value("prize now") / 2  # (the comma is not a word of the vectorizer)
    assert "now free" not in column  # an unseen bigram contributes nothing
    assert np.allclose(part.words, expected, atol=1e-7)
    assert part.bias == 0.5 and part.unplaced == pytest.approx(0.0, abs=1e-12)
    assert part.total == pytest.approx(float(row @ weight[:, 0]) + 0.5, abs=1e-6)


def test_ngrams_are_found_as_the_vectorizer_finds_them_after_lowercasing():
    features = LexicalFeatures.fit(["İstanbul güzel", "güzel şehir"], LexicalSection(min_df=1))
    text = "İstanbul güzel!"  # "İ".lower() is two characters: the spans must still land on the right words
    words = Words.of(text)
    part = lexical_part(features, np.ones((features.spec.num_features, 1)), np.zeros(1), text, words)[0]
    assert part.unplaced == pytest.approx(0.0, abs=1e-12) and part.words[0] > 0 and part.words[2] == 0


def test_character_ngrams_are_placed_on_their_words_exactly():
    features = LexicalFeatures.fit(
        ["refund my order", "order refunded twice", "reset password"], LexicalSection(char_ngrams=(2, 3), min_df=1)
    )
    weight = np.random.default_rng(1).normal(size=(features.spec.num_features, 3))
    text = "Refund the order, please"
    words = Words.of(text)
    parts = lexical_part(features, weight, np.zeros(3), text, words)
    row = features.transform([text]).toarray()[0]
    for target, part in enumerate(parts):
        assert part.unplaced == pytest.approx(0.0, abs=1e-12)
        assert part.words.sum() == pytest.approx(float(row @ weight[:, target]), abs=1e-6)
    # by hand: only character n-grams that reach the comma of "order," could land on ","; none is in the vocabulary
    # (no fitting text has a comma), so "order" gets its word unigram and the n-grams inside it, and "," nothing
    chars, word = features.vectorizers["char"].vocabulary_, features.vectorizers["word"].vocabulary_
    offset = features.spec.num_word_features
    value = lambda column: row[column] * weight[column, 0]  # noqa: E731
    assert not {", ", "r,", "er,", "r, "} & set(chars) and "the order" not in word and "order please" not in word
    assert parts[0].words[words.word_list().index(",")] == pytest.approx(0.0, abs=1e-12)
    inside = (" o", "or", "rd", "de", "er", " or", "ord", "rde", "der")
    own = value(word["order"]) + sum(value(offset + chars[g]) for g in inside if g in chars)
    assert parts[0].words[2] == pytest.approx(own, abs=1e-9)


def test_attributions_add_up_and_probabilities_are_predicts(trained_model, explainer):
    texts = thread_subset(1, seed=7).text.tolist()[:1]
    for text in texts:
        assert_explained(trained_model, None, text)
        explanation = explainer.explain(text)
        item = explanation.explained[0]
        assert item.gap <= MAX_GAP and not item.flagged
        unread = explanation.words.starts >= explanation.read_until  # past the 128 tokens the encoder reads
        assert unread.any() and np.all(item.semantic[unread] == 0) and np.any(item.lexical[unread] != 0)


def removed_words_score(explainer: Explainer, text: str, target: int) -> float:
    """The explained score of ``text`` with every word piece taken out, computed without the explainer's presence
    weights: the transformer reads [CLS] and [SEP] alone, at the positions they have in the text."""
    encoder, scores = explainer.scores.encoder, explainer.scores
    length = len(encoder.tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([[encoder.tokenizer.cls_token_id, encoder.tokenizer.sep_token_id]])
    with torch.no_grad():
        positions = torch.tensor([[0, length + 1]])  # with a mask given, transformers reads no packed sequences in them
        hidden = encoder.transformer(
            input_ids=ids, attention_mask=torch.ones(1, 2), position_ids=positions
        ).last_hidden_state
        logits = scores.head(encoder.sentence_vectors(hidden, torch.ones(1, 2)))
    return float((logits @ scores.mix)[0, target])


def kept_words_score(explainer: Explainer, windows, roots: torch.Tensor, target: int) -> torch.Tensor:
    """The explained score of the text with the word pieces that ``roots`` (count x positions, 0 or 1) remove taken
    out, computed the model's own way: a 0/1 attention mask that leaves them out, the positions kept."""
    from bertcls.explain.semantic import word_embeddings

    encoder, scores = explainer.scores.encoder, explainer.scores
    words = word_embeddings(scores, windows).reshape(*windows.ids.shape, -1)
    found = []
    with torch.no_grad():
        for root in roots:
            keep = (root.reshape(windows.ids.shape) * windows.mask).long()
            hidden = encoder.transformer(inputs_embeds=words, attention_mask=keep).last_hidden_state
            vectors = encoder.sentence_vectors(hidden, keep.to(hidden.dtype)).reshape(1, len(windows.ids), -1)
            found.append(float((scores.head(scores.pool_windows(vectors)) @ scores.mix)[0, target]))
    return torch.tensor(found)


def test_each_method_starts_from_its_own_baseline(explainer):
    """The default (expected) starts from random partial removals of the words and its base is their mean score;
    presence starts from the text with its words removed; embeddings from [PAD]. All add up, and they give
    different attributions."""
    from bertcls.explain.semantic import TokenWindows, endpoints

    text = "I was charged twice for my order and want a refund"
    assert explainer.method == "expected"  # MiniLM weighs its tokens by a float mask: no fallback
    by_method = {"expected": explainer.explain(text).explained[0]}
    label = by_method["expected"].label
    target = explainer.labels.index(label)
    for method in ("presence", "embeddings"):
        other = Explainer(explainer.classifier, steps=16, method=method)
        by_method[method] = other.explain(text, label).explained[0]
    assert all(item.gap <= MAX_GAP for item in by_method.values())
    assert by_method["presence"].score == pytest.approx(by_method["embeddings"].score, abs=1e-5)  # the same model
    assert by_method["expected"].score == pytest.approx(by_method["presence"].score, abs=1e-5)
    assert not np.allclose(by_method["presence"].semantic, by_method["embeddings"].semantic, atol=1e-3)
    assert not np.allclose(by_method["expected"].semantic, by_method["presence"].semantic, atol=1e-3)
    windows = TokenWindows.of(explainer.scores.encoder, None, text)
    words = Words.of(text)
    starts = explainer.random_starts(text, words, windows)
    assert starts is not None and starts.shape == (4, windows.ids.numel())
    baselines = {
        method: float(
            endpoints(explainer.scores, windows, method, starts).logits[1:].mean(0).numpy() @ explainer.mix[:, target]
        )
        for method in ("expected", "presence", "embeddings")
    }
    hand = kept_words_score(explainer, windows, starts, target)
    assert baselines["expected"] == pytest.approx(float(hand.mean()), abs=1e-4)
    assert baselines["presence"] == pytest.approx(removed_words_score(explainer, text, target), abs=1e-4)
    assert len({round(value, 3) for value in baselines.values()}) == 3
    # base = the semantic baseline + what the lexical layer gives no word: only the baseline differs
    for method in ("expected", "embeddings"):
        moved = by_method[method].base - by_method["presence"].base
        assert moved == pytest.approx(baselines[method] - baselines["presence"], abs=1e-5)


def test_random_removals_take_whole_words_and_keep_the_special_tokens(explainer):
    from bertcls.explain.semantic import TokenWindows, random_removals

    text = "Unbelievably, the reimbursement arrived twice: antidisestablishmentarianism!"
    words, windows = Words.of(text), TokenWindows.of(explainer.scores.encoder, None, text)
    roots = random_removals(windows, words, 64, np.random.default_rng(5)).reshape(64, -1)
    inside = torch.from_numpy(windows.pieces.ravel() >= 0)
    assert set(roots.unique().tolist()) <= {0.0, 1.0} and bool((roots[:, ~inside] == 1).all())
    covered = [tuple(words.covering(*span)) for span in windows.spans]
    pieces = windows.pieces.ravel()[inside.numpy()]
    for row in roots[:, inside]:
        by_word: dict[tuple, set] = {}
        for piece, value in zip(pieces, row.tolist(), strict=True):
            by_word.setdefault(covered[piece], set()).add(value)
        assert all(len(values) == 1 for values in by_word.values())  # every piece of a word goes with it
    shares = roots[:, inside].mean(dim=1)
    assert shares.min() < 0.3 and shares.max() > 0.7  # a uniform random share kept, not always about half


def test_expected_gradients_are_seeded_by_the_seed_and_the_text(explainer):
    """The same text gives the same explanation whatever was explained before it; another seed draws other
    removals (other attributions, still complete)."""
    classifier = explainer.classifier
    text, other = "I was charged twice for my order", "The app crashes when I open settings"
    first = explainer.explain(text).explained[0]
    explainer.explain(other)
    again = explainer.explain(text).explained[0]
    assert np.array_equal(first.semantic, again.semantic) and first.base == again.base
    from bertcls.explain.semantic import TokenWindows

    same_length = "I was billed twice for my order"  # as many words and pieces: only the text differs
    drawn = [
        explainer.random_starts(t, Words.of(t), TokenWindows.of(explainer.scores.encoder, None, t))
        for t in (text, same_length)
    ]
    assert drawn[0] is not None and drawn[1] is not None and drawn[0].shape == drawn[1].shape
    assert not torch.equal(drawn[0], drawn[1])
    reseeded = Explainer(classifier, steps=16, seed=1).explain(text).explained[0]
    assert not np.allclose(first.semantic, reseeded.semantic, atol=1e-4) and reseeded.gap <= MAX_GAP
    assert first.score == pytest.approx(reseeded.score, abs=1e-6)


def test_steps_double_while_the_gap_is_over_five_percent(explainer):
    """From 2 steps the gap of this text is over 5%: the steps double until it is within, and the result is the
    one a fixed run at that step count gives; a cap at 2 keeps the 2 steps and flags the label."""
    classifier, text = explainer.classifier, "I was charged twice for my order and want a refund"
    capped = Explainer(classifier, steps=2, max_steps=2).explain(text).explained[0]
    assert capped.steps == 2 and capped.flagged
    doubled = Explainer(classifier, steps=2, max_steps=64).explain(text).explained[0]
    assert doubled.steps > 2 and doubled.gap <= MAX_GAP
    fixed = Explainer(classifier, steps=doubled.steps, max_steps=doubled.steps).explain(text).explained[0]
    assert np.allclose(doubled.semantic, fixed.semantic, atol=1e-9) and doubled.gap == pytest.approx(fixed.gap)


def test_paths_of_long_texts_are_split_over_passes_without_changing_the_result(explainer, monkeypatch):
    """16 paths over 3 windows do not fit one pass of 32 windows: they run in groups, and give what one pass
    gives."""
    from bertcls.explain import semantic

    windowing = Windowing(stride=48, max_chunks=4, pooling="mean")
    classifier = dataclasses.replace(explainer.classifier, windowing=windowing)
    grouped = Explainer(classifier, steps=2, max_steps=2, baselines=16)
    text = thread_subset(1, seed=8).text.iloc[0]
    windows = semantic.TokenWindows.of(grouped.scores.encoder, windowing, text)
    assert len(windows.ids) == 3  # so the steps of 32 // 3 = 10 paths per pass: two groups
    calls = []
    attribute = semantic_attribute_spy(monkeypatch, calls)
    in_groups = grouped.explain(text).explained[0]
    assert [len(inputs) for inputs in calls] == [10, 6], attribute
    monkeypatch.setattr(semantic, "SEQUENCES_PER_PASS", 4096)
    calls.clear()
    at_once = grouped.explain(text).explained[0]
    assert [len(inputs) for inputs in calls] == [16]
    assert np.allclose(in_groups.semantic, at_once.semantic, atol=1e-6) and in_groups.base == at_once.base


def semantic_attribute_spy(monkeypatch, calls: list) -> object:
    """Record the inputs of each call of Captum's IntegratedGradients.attribute (the real one runs)."""
    from captum.attr import IntegratedGradients

    real = IntegratedGradients.attribute

    def recorded(self, inputs, *args, **kwargs):
        calls.append(inputs)
        return real(self, inputs, *args, **kwargs)

    monkeypatch.setattr(IntegratedGradients, "attribute", recorded)
    return real


def hand_presence_logits(explainer: Explainer, ids: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """The head's logits for one sequence whose tokens have the given presences, computed by hand from the
    layers' weights: each key's softmax weight times its presence in every attention (exp(score) * p over the
    sum of the same), then the mean of the last hidden states weighted by presence."""
    encoder, scores = explainer.scores.encoder, explainer.scores
    bert = encoder.transformer
    with torch.no_grad():
        hidden = bert.embeddings(input_ids=ids)
        for layer in bert.encoder.layer:
            attend = layer.attention.self
            split = (1, -1, attend.num_attention_heads, attend.attention_head_size)
            q, k, v = (part(hidden).view(split).transpose(1, 2) for part in (attend.query, attend.key, attend.value))
            raw = torch.exp(q @ k.transpose(2, 3) / attend.attention_head_size**0.5) * presence[None, None, None, :]
            mixed = ((raw / raw.sum(-1, keepdim=True)) @ v).transpose(1, 2).reshape(1, -1, bert.config.hidden_size)
            attended = layer.attention.output.LayerNorm(layer.attention.output.dense(mixed) + hidden)
            inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(attended))
            hidden = layer.output.LayerNorm(layer.output.dense(inner) + attended)
        pooled = (hidden[0] * presence[:, None]).sum(0) / presence.sum()
        if encoder.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=0)
        return scores.head(pooled[None, :])


def test_a_word_half_present_weighs_half_in_every_attention_and_the_pooling(explainer):
    """Between the ends: presence 0.5 on one word piece, through the explainer's float mask, against the hand
    computation; eager attention and SDPA alike."""
    from bertcls.explain.semantic import PresenceScores, TokenWindows, word_embeddings

    text = "please refund the second payment"
    windows = TokenWindows.of(explainer.scores.encoder, None, text)
    root = torch.ones(1, windows.ids.numel())
    root[0, 2] = 0.5**0.5  # presence is the integration variable squared
    presence = torch.ones(windows.ids.shape[1])
    presence[2] = 0.5
    expected = hand_presence_logits(explainer, windows.ids, presence)
    bert = explainer.scores.encoder.transformer
    kept = bert.config._attn_implementation
    try:
        for implementation in ("eager", "sdpa"):
            bert.set_attn_implementation(implementation)
            with torch.no_grad():
                words = word_embeddings(explainer.scores, windows)
                got = PresenceScores(explainer.scores, windows, words).logits(root)
            assert torch.allclose(got, expected, atol=1e-5), implementation
    finally:
        bert.set_attn_implementation(kept)
    plain = explainer.scores.logits(word_embeddings(explainer.scores, windows))
    assert not torch.allclose(expected, plain, atol=1e-3)  # the half-present word moves the logits


def test_fully_present_windows_give_the_plain_logits_padding_and_all(explainer):
    """A long text's windows (the last one shorter, padded): presence 1 reads exactly as the 0/1 mask."""
    from bertcls.explain.semantic import DocumentScores, PresenceScores, TokenWindows, word_embeddings

    windowing = Windowing(stride=48, max_chunks=4, pooling="mean")
    scores = DocumentScores(explainer.scores.encoder, windowing, explainer.scores.head, explainer.scores.mix)
    windows = TokenWindows.of(scores.encoder, windowing, thread_subset(1, seed=8).text.iloc[0])
    assert len(windows.ids) > 1 and (windows.mask[-1] == 0).any()
    with torch.no_grad():
        words = word_embeddings(scores, windows)
        present = PresenceScores(scores, windows, words).logits(torch.ones(1, windows.ids.numel()))
        assert torch.allclose(present, scores.logits(words), atol=1e-5)


def refuse_float_masks(presence: torch.Tensor) -> torch.Tensor:
    raise ValueError("Wrong shape for attention_mask")  # as transformers 4.x can for a 4D float mask


@pytest.mark.parametrize(
    ("reading", "mask", "reason"),
    [
        (
            "ignored",
            lambda presence: torch.zeros(presence.shape[0], 1, presence.shape[1], presence.shape[1]),
            "a text fully present does not give the model's own logits",  # padding read too
        ),
        ("0/1 near removal", lambda presence: additive_mask((presence > 0).to(presence.dtype)), "as 0 or 1"),
        ("0/1 near presence", lambda presence: additive_mask((presence >= 1).to(presence.dtype)), "as 0 or 1"),
        ("refused", refuse_float_masks, "does not take a float attention mask (ValueError"),
    ],
)
def test_a_transformer_that_misreads_the_presence_mask_is_explained_by_embeddings(
    trained_model, monkeypatch, caplog, reading, mask, reason
):
    """The check before explaining by presence runs the model: a mask the transformer ignores, reads as 0/1 (the
    padding and both ends still right: only the presence just short of an end shows it) or refuses fails it, and
    the explainer falls back, saying why."""
    from bertcls.explain import semantic

    monkeypatch.setattr(semantic, "additive_mask", mask)
    classifier = Classifier.load(load_named_checkpoint(None, trained_model), trained_model)
    assert Explainer(classifier, steps=16).method == "embeddings", reading
    assert "explaining by embeddings instead" in caplog.text and reason in caplog.text


@pytest.mark.parametrize("family", ["bert", "roberta", "mpnet"])
def test_other_transformer_families_pass_the_presence_check(explainer, family):
    """RoBERTa numbers its positions from the padding index and MPNet adds a relative-position bias: presence still
    works for them (tiny random models built from a config, the tokenizer's ids within their vocabulary)."""
    import copy

    from transformers import AutoConfig, AutoModel

    from bertcls.explain.semantic import DocumentScores, presence_problem

    torch.manual_seed(0)
    tokenizer = explainer.scores.encoder.tokenizer
    config = AutoConfig.for_model(
        family, vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    encoder = copy.deepcopy(explainer.scores.encoder)
    encoder.transformer = AutoModel.from_config(config).eval()
    scores = DocumentScores(encoder, None, torch.nn.Linear(32, 3), torch.eye(3))
    assert presence_problem(scores) is None


def test_an_encoder_that_cannot_weigh_tokens_is_explained_by_embeddings(trained_model, caplog):
    classifier = Classifier.load(load_named_checkpoint(None, trained_model), trained_model)
    classifier.text_encoder().pooling = "max"  # max pooling ignores a token's weight
    explainer = Explainer(classifier, steps=16)
    assert explainer.method == "embeddings" and "explaining by embeddings instead" in caplog.text
    assert explainer.explain("charged twice for one order").explained[0].gap <= MAX_GAP


@pytest.mark.slow
def test_long_texts_read_as_windows_are_explained_whole(trained_model, explainer):
    """A model reading windows: the explanation covers every window's words and adds up to the pooled score."""
    from bertcls.model.encoder import embed_documents

    classifier = dataclasses.replace(explainer.classifier, windowing=Windowing(stride=64, max_chunks=4, pooling="mean"))
    windowed = Explainer(classifier, steps=8)
    text = thread_subset(1, seed=8).text.iloc[0]
    explanation = windowed.explain(text)
    vectors = embed_documents(classifier.text_encoder(), [text], 8, torch.device("cpu"), classifier.windowing)
    expected = classifier.predict_embedded(vectors, [text], torch.device("cpu"))[0]
    assert np.abs(explanation.probabilities - expected).max() <= 1e-5
    item = explanation.explained[0]
    assert item.gap <= MAX_GAP
    assert explanation.read_until > explainer.explain(text).read_until  # more of the text is read
    read = explanation.words.starts < explanation.read_until
    assert np.count_nonzero(item.semantic[read]) > 0.9 * read.sum()


@pytest.mark.slow
def test_the_planted_word_ranks_first(tmp_path, cli):
    """A synthetic task where one word decides the label: that word must come first in its texts' explanations."""
    rng = np.random.default_rng(0)
    filler = "the a of to and in is it for on with as was at by from this that have be are or not but".split()  # noqa: SIM905
    filler += "report meeting weather garden kitchen window river market letter evening".split()  # noqa: SIM905

    rows = []
    for number in range(160):
        words = list(rng.choice(filler, size=int(rng.integers(8, 14))))
        planted = number % 2 == 0
        if planted:
            words.insert(int(rng.integers(0, len(words))), "zanzibar")
        rows.append((" ".join(words), "planted" if planted else "plain"))
    data = tmp_path / "planted.csv"
    pd.DataFrame(rows, columns=["text", "category"]).to_csv(data, index=False)
    code, _, err = cli("train", "--output-root", tmp_path / "root", "--data-file", data, "-v", "0")
    assert code == 0, err
    test = read_csv(tmp_path / "root" / "data" / "test.csv")
    texts = test[test.category == "planted"].text.tolist()[:5]
    explainer = Explainer(Classifier.load(load_named_checkpoint(None, tmp_path / "root"), tmp_path / "root"), 32)
    for text in texts:
        explanation = explainer.explain(text, "planted")
        item = explanation.explained[0]
        assert explanation.words.word(int(np.argmax(item.words))) == "zanzibar", text
        top_semantic = {explanation.words.word(int(i)) for i in np.argsort(-item.semantic)[:3]}
        assert "zanzibar" in top_semantic, text  # the encoder's view alone finds it too


@pytest.mark.slow
def test_multi_label_explains_every_label_given(ml_model, cli, tmp_path):
    texts = read_csv(ml_model / "data" / "test.csv").head(4)
    code, out, err = cli("predict", "--output-root", ml_model, "--data-file", ml_model / "data" / "test.csv",
                         "--output-file", tmp_path / "p.csv")  # fmt: skip
    assert code == 0, err
    given = read_csv(tmp_path / "p.csv").head(4)["predicted_labels"].tolist()
    code, out, err = cli("explain", "--output-root", ml_model, "--data-file", ml_model / "data" / "test.csv",
                         "--limit", "4", "--steps", "16", "--output-file", tmp_path / "x.csv")  # fmt: skip
    assert code == 0, err
    rows = read_csv(tmp_path / "x.csv")
    for line, labels in zip(texts.source_row, given, strict=True):
        explained = rows[rows.source_row == line]
        expected = labels.split("|") if labels else None
        if expected:  # every label given is explained (none given: the most probable one)
            assert sorted(explained.label) == sorted(expected)
        else:
            assert len(explained) == 1
    assert rows.completeness_gap.astype(float).median() <= 0.01
    assert_explained(ml_model, None, texts.text.iloc[0])


def test_cli_writes_the_csv_and_the_page(trained_model, cli, tmp_path):
    data = trained_model / "data" / "test.csv"
    lines = read_csv(data).source_row.iloc[[2, 0]].tolist()  # a split keeps the line numbers of the user's file
    code, out, err = cli("explain", "--output-root", trained_model, "--data-file", data, "--rows", ",".join(lines),
                         "--steps", "16", "--output-file", tmp_path / "why.csv")  # fmt: skip
    assert code == 0, err
    rows = read_csv(tmp_path / "why.csv")
    assert rows.source_row.tolist() == lines
    assert set(rows.columns) >= {"label", "probability", "top_positive", "top_negative", "completeness_gap", "flagged"}
    assert all(re.match(r"^\S+ \+\d+\.\d{3}", cell) for cell in rows.top_positive)
    page = (tmp_path / "why.html").read_text()
    assert page.count('class="xpl"') == 2 and "<script" not in page and "http" not in page.split("<body>")[1]
    assert "why.csv" in out and "why.html" in out
    assert set(rows.method) == {"expected"} and "to the text, averaged (<code>expected</code>)" in page
    assert set(rows.steps.astype(int)) <= {16, 32, 64}
    semantic = {}
    for seed in ("0", "1", "0"):
        code, out, err = cli("explain", "--output-root", trained_model, "--text", "I was charged twice for my order",
                             "--steps", "16", "--baselines", "2", "--seed", seed)  # fmt: skip
        assert code == 0, err
        single = read_csv(trained_model / "explanations" / "explanations.csv")
        assert len(single) == 1 and single.source_row.iloc[0] == "" and single.label.iloc[0] == "billing"
        semantic.setdefault(seed, set()).add(single.semantic_part.iloc[0])
    assert len(semantic["0"]) == 1 and semantic["0"] != semantic["1"]  # the seed decides the random removals


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium (apt-get install chromium)")
def test_the_page_highlights_words_in_a_real_browser(trained_model, explainer, tmp_path):
    from bertcls.explain.outputs import ExplainedText
    from bertcls.explain.page import render_page

    text = "I was charged twice for my order, please refund the second payment"
    explanation = explainer.explain(text)
    page = tmp_path / "page.html"
    page.write_text(render_page([ExplainedText(explanation, 7, "billing")], "best_model.pt", "a score"))
    done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={tmp_path / 'p'}", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    dom = done.stdout
    spans = re.findall(r'<span class="w[^"]*" style="background: ?rgba\((\d+), ?\d+, ?\d+, ?([\d.]+)\);?" '
                       r'title="[^"]+" data-score="([-\d.]+)">([^<]+)</span>', dom)  # fmt: skip
    assert [s[3] for s in spans] == explanation.word_list(), done.stderr[-999:]
    item = explanation.explained[0]
    for (red, _, score, _), value in zip(spans, item.words, strict=True):
        assert float(score) == pytest.approx(value, abs=1e-5)
        assert (red == "22") == (value > 0)  # green for a word that raises the score, red for one that lowers it
    strongest = int(np.argmax(np.abs(item.words)))
    assert float(spans[strongest][1]) == pytest.approx(0.85, abs=1e-3)
    assert f"Row 7: {item.label}" in dom and "true label billing" in dom


def test_the_server_explains_like_the_cli(trained_model):
    from fastapi.testclient import TestClient

    from bertcls.config.sources import resolve_settings
    from bertcls.serving.app import ServerState, create_app
    from bertcls.serving.engine import load_model

    settings = resolve_settings({"output_root": str(trained_model), "verbosity": 0}).settings
    text = "My invoice shows a charge I do not recognise"
    with TestClient(create_app(ServerState(settings, None, load_model(settings, None)))) as client:
        answer = client.post("/v1/explain", json={"texts": [text], "steps": 16})
        unknown = client.post("/v1/explain", json={"texts": [text], "label": "nonsense"})
        empty = client.post("/v1/explain", json={"texts": [" "]})
        many = client.post("/v1/explain", json={"texts": [text] * 9})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    record = body["explanations"][0]["explained"][0]
    classifier = Classifier.load(load_named_checkpoint(None, trained_model), trained_model)
    expected = Explainer.configured(classifier, settings.explain).explain(text, steps=16)
    item = expected.explained[0]
    assert record["label"] == item.label and record["probability"] == pytest.approx(item.probability, abs=1e-6)
    assert [w["word"] for w in record["words"]] == expected.word_list()
    assert np.allclose([w["semantic"] for w in record["words"]], item.semantic, atol=1e-6)
    assert body["score_meaning"].startswith("the label's logit")
    assert body["explanations"][0]["method"] == "expected" and record["steps"] == item.steps
    overrides = {"output_root": str(trained_model), "verbosity": 0, "explain.method": "embeddings"}
    by_embeddings = resolve_settings({**overrides, "explain.max_steps": 16}).settings
    with TestClient(create_app(ServerState(by_embeddings, None, load_model(by_embeddings, None)))) as client:
        answer = client.post("/v1/explain", json={"texts": [text], "steps": 16})
        past_cap = client.post("/v1/explain", json={"texts": [text], "steps": 32})
    assert answer.status_code == 200 and answer.json()["explanations"][0]["method"] == "embeddings"
    assert past_cap.status_code == 422 and "must be at most explain.max_steps (16)" in past_cap.json()["error"]
    assert unknown.status_code == 422 and "Unknown label 'nonsense'" in unknown.json()["error"]
    assert empty.status_code == 422 and many.status_code == 413
    onnx_like = dataclasses.replace(load_model(settings, None), checkpoint=None)  # what an ONNX server holds
    with TestClient(create_app(ServerState(settings, None, onnx_like))) as client:
        refused = client.post("/v1/explain", json={"texts": [text]})
    assert refused.status_code == 409 and "need the torch model" in refused.json()["error"]


@pytest.mark.slow
def test_evaluate_explains_its_most_confident_errors(trained_model, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("BERTCLS_EXPLAIN__STEPS", "16")
    monkeypatch.setenv("BERTCLS_EXPLAIN__METHOD", "embeddings")  # the config reaches the report's explanations
    data = tmp_path / "hard.csv"
    frame = read_csv(trained_model / "data" / "test.csv")
    names = sorted(set(frame.category))
    wrong = {name: names[(k + 1) % len(names)] for k, name in enumerate(names)}
    frame.assign(category=frame.category.map(wrong)).head(12).to_csv(data, index=False)  # every label wrong
    code, _, err = cli("evaluate", "--output-root", trained_model, "--data-file", data, "--cv-folds", "0")
    assert code == 0, err
    report = (trained_model / "evaluation_results" / "report.html").read_text()
    section = report.split("Most confident errors, explained")[1]
    assert section.count('class="xpl"') == 5 and "Error 1" in section and "true label" in section
    assert "with [PAD] in place of its words (<code>embeddings</code>)" in section


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label", "nonsense"], "Unknown label 'nonsense'; this model's labels are"),
        (["--rows", "99999"], "has no row 99999 (its 30 data rows run from CSV line"),
        (["--rows", "two"], "is not a list of row numbers"),
        (["--rows", "1"], "the first data row is 2"),
        (["--rows", "2", "--limit", "3"], "Give --rows or --limit, not both."),
        (["--text", "   "], "The text to explain is empty"),
        (["--output-file", "why.txt"], "should end in .csv"),
        (["--method", "lime"], "explain.method"),
        (["--baselines", "0"], "--baselines"),
        (["--steps", "100"], "explain.steps (100) must be at most explain.max_steps (64)"),
        (["--best-model", "export/model.onnx"], "is an ONNX export; explanations need the torch model"),
    ],
)
def test_bad_input_is_one_sentence(trained_model, cli, args, message):
    data = ["--data-file", str(trained_model / "data" / "test.csv")] if "--text" not in args else []
    code, out, err = cli("explain", "--output-root", trained_model, *data, *args)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_bad_input_without_text_or_weights(trained_model, cli, tmp_path):
    code, _, err = cli("explain", "--output-root", trained_model)
    assert code == 2 and "Give either --data-file FILE or --text TEXT" in err
    data = tmp_path / "blank.csv"
    pd.DataFrame({"text": ["fine text", " "], "category": ["billing", "billing"]}).to_csv(data, index=False)
    code, _, err = cli("explain", "--output-root", trained_model, "--data-file", data, "--rows", "3")
    assert code == 2 and "Row 3 of Data file" in err and "has an empty text" in err
    twice = tmp_path / "twice.csv"
    pd.DataFrame({"text": ["one text", "another"], "source_row": [7, 7]}).to_csv(twice, index=False)
    code, _, err = cli("explain", "--output-root", trained_model, "--data-file", twice, "--rows", "7")
    assert code == 2 and "names CSV line 7 more than once" in err
    code, _, err = cli("explain", "--output-root", tmp_path / "nothing", "--text", "hello there")
    assert code == 2 and "does not exist" in err and "Traceback" not in err, err
