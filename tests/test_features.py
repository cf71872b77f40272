"""Lexical (TF-IDF) features, whole-document windows, class weights, and switching each of them off."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import thread_subset

from bertcls.config.settings import EncoderSection, LexicalSection
from bertcls.config.sources import resolve_settings
from bertcls.features.ahead import PARALLELISM, TokensAhead
from bertcls.features.lexical import LexicalFeatures
from bertcls.features.service import EmbeddingService
from bertcls.inference.prediction import Predictor
from bertcls.model import encoder as encoder_module
from bertcls.model.checkpoint import build_classifier, load_checkpoint, save_checkpoint
from bertcls.model.encoder import pool_windows, split_into_windows, text_windows, truncated_ids, window_batches
from bertcls.task import SingleLabel
from bertcls.training.workflow import run_training

DEVICE = torch.device("cpu")


def train(root, data, **flags):
    settings = resolve_settings(
        {
            "output_root": str(root),
            "data.data_file": str(data),
            "model.max_seq_len": 64,
            "verbosity": 0,
            "model.num_epochs": 4,
            **flags,
        }
    ).settings
    run_training(settings)
    return load_checkpoint(root / "best_trials" / "best_model.pt")


@pytest.fixture(scope="module")
def small_data(workspace):
    path = workspace / "threads40.csv"
    thread_subset(8, seed=3).to_csv(path, index=False)
    return path


def test_lexical_features_round_trip_through_the_checkpoint(trained_model, tmp_path):
    ckpt = load_checkpoint(trained_model / "best_trials" / "best_model.pt")
    assert ckpt.architecture.lexical is not None and any(k.startswith("lexical.") for k in ckpt.state)
    copy = save_checkpoint(tmp_path / "copy.pt", ckpt.state, ckpt.meta, ckpt.lexical_features())
    with open(copy, "rb") as handle:  # plain tensors and data: loads with weights_only=True
        payload = torch.load(handle, weights_only=True)
    assert payload["lexical_vocabulary"]["word"] == ckpt.vocabularies["word"]
    texts = ["Shares in the bank fell sharply after profits slumped.", "The striker scored twice in the final."]
    first = Predictor(ckpt, trained_model, DEVICE).predict_proba(texts, 8)
    again = Predictor(load_checkpoint(copy), trained_model, DEVICE).predict_proba(texts, 8)
    assert np.array_equal(first, again)
    fitted = ckpt.lexical_features().transform(texts)
    assert fitted.shape == (2, ckpt.architecture.lexical.num_features) and fitted.nnz > 0


def test_lexical_vectorizer_rebuilt_from_terms_and_idf_transforms_identically():
    texts = ["the cat sat on the mat", "the dog sat", "a cat and a dog", "cats and dogs are fine pets"]
    fitted = LexicalFeatures.fit(texts, LexicalSection(min_df=1, char_ngrams=(2, 4)))
    vocabularies, tensors = fitted.to_payload()
    rebuilt = LexicalFeatures.from_payload(fitted.spec, vocabularies, tensors)
    query = ["the cat and the mat", "unseen words only"]
    assert abs(fitted.transform(query) - rebuilt.transform(query)).max() < 1e-7
    assert fitted.spec.num_char_features > 0


def test_a_text_of_three_windows_gives_three_cache_entries_and_their_pooled_vector(workspace):
    cfg = EncoderSection(long_texts="chunks", chunk_stride=20, max_chunks=8)
    service = EmbeddingService(cfg, 32, workspace / "chunks", DEVICE)
    tokens = service.tokenizer(thread_subset(1)["text"][0], add_special_tokens=False)["input_ids"]
    text = service.tokenizer.decode(tokens[:65])  # 65 tokens: windows of 30 every 20 tokens -> 3 windows
    ids = service.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(text_windows(ids, 32, 20, 8)) == 3
    vectors, lengths = service.embed([text])
    shards = list(service.window_cache.folder.glob("shard_*.safetensors"))
    assert service.stats.misses == 3 and len(shards) == 1 and lengths[0] == len(ids) + 2
    windows, owner, _ = split_into_windows(service.tokenizer, [text], 32, 20, 8)
    each = service.encoder.embed_windows(windows, 8, DEVICE)
    assert np.allclose(vectors, pool_windows(each, owner, 1, "mean", normalize=True), atol=1e-6)
    assert service.chunking.as_dict() == {"texts": 1, "chunked": 1, "windows": 3, "cut": 0}
    service.embed([text])
    assert service.stats.hits == 3  # a second pass reads all three windows from the cache


def test_one_tokeniser_pass_gives_the_truncated_ids_lengths_and_vectors_of_two(workspace):
    service = EmbeddingService(EncoderSection(), 32, workspace / "one_pass", DEVICE)
    tokenizer, encoder = service.tokenizer, service.encoder
    long = " ".join(thread_subset(2)["text"])  # hundreds of tokens
    texts = [long, "", "short", "naïve café – 東京 🙂 " * 9, "word " * 30, "word " * 31, long[:500]]
    for max_len in (8, 32, 64):
        ids, lengths = truncated_ids(tokenizer, texts, max_len)
        assert ids == tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]
        assert lengths.tolist() == [len(x) for x in tokenizer(texts, truncation=False)["input_ids"]]
    encoder.max_seq_len = 32
    vectors, lengths = encoder.embed_with_lengths(texts, 3, DEVICE)
    assert np.array_equal(lengths, encoder.token_lengths(texts))
    with torch.inference_mode():  # the tokeniser's own padded batch (token type ids included) gives the same rows
        expected = encoder(encoder.tokenize(texts)).numpy()
    assert np.abs(vectors - expected).max() < 1e-5
    empty_vectors, empty_lengths = encoder.embed_with_lengths([], 3, DEVICE)  # a rank's empty share of a block
    assert empty_vectors.shape == (0, encoder.dim) and empty_lengths.shape == (0,)


def test_window_batches_hold_fewer_rows_where_the_windows_are_wide():
    windows = [[7] * n for n in (3, 100, 8, 90, 5, 10, 7)]
    batches = list(window_batches(windows, 4, 0, rows_for=lambda width: 256 // width))
    assert [ids.shape for _, ids, _ in batches] == [(2, 100), (4, 10), (1, 3)]  # longest first, 256 tokens a batch
    assert sorted(i for indices, _, _ in batches for i in indices) == list(range(len(windows)))
    for indices, ids, mask in batches:
        for row, i in enumerate(indices):
            assert ids[row, : len(windows[i])].tolist() == windows[i] and mask[row].sum() == len(windows[i])
    assert [len(i) for i, _, _ in window_batches(windows, 4, 0)] == [4, 3]  # no bound: batch_size rows
    assert [len(i) for i, _, _ in window_batches(windows, 4, 0, rows_for=lambda _width: 0)] == [1] * 7


def test_the_encoders_batches_stay_under_the_activation_bound(workspace):
    encoder = EmbeddingService(EncoderSection(), 128, workspace / "rows", DEVICE).encoder
    wide = encoder.transformer.config.intermediate_size  # MiniLM: 1536
    for width in (16, 128, 256):
        for precision, size in (("fp32", 4), ("bf16", 2)):
            rows = encoder.rows_for(width, precision)
            assert rows * width * wide * size <= 8 * 2**20 < (rows + 1) * width * wide * size
    assert (encoder.rows_for(128, "fp32"), encoder.rows_for(128, "bf16")) == (10, 21)
    assert encoder.rows_for(4096, "fp32") == 1 and encoder.rows_for(0, "fp32") > 0  # at least a row; no division by 0


def test_tokens_made_ahead_are_the_tokenizers_own_and_its_parallelism_comes_back(workspace, monkeypatch):
    tokenizer = EmbeddingService(EncoderSection(), 32, workspace / "ahead", DEVICE).tokenizer
    texts = [" ".join(thread_subset(1)["text"]), "", "short", "naïve café 東京 🙂 " * 9, "word " * 40, "short"]
    expected_ids, expected_lengths = truncated_ids(tokenizer, texts, 32)
    monkeypatch.delenv(PARALLELISM, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with TokensAhead(tokenizer, texts[:3], 32) as ahead:
        assert os.environ[PARALLELISM] == "false"  # one core for the tokenizer, the other for the main thread
        assert len(ahead) == 3
        ids, lengths = ahead.take(texts)  # the last three were not given ahead: tokenized now
    assert PARALLELISM not in os.environ
    assert [row.tolist() for row in ids] == expected_ids and lengths.tolist() == expected_lengths.tolist()
    with pytest.raises(RuntimeError, match="inside"), TokensAhead(tokenizer, texts, 32):
        raise RuntimeError("an error inside the block")
    assert PARALLELISM not in os.environ  # given back on the way out of a failure too
    monkeypatch.setattr(os, "cpu_count", lambda: 16)  # many cores: the tokenizer keeps its threads
    with TokensAhead(tokenizer, texts, 32):
        assert PARALLELISM not in os.environ
    monkeypatch.setenv(PARALLELISM, "true")  # the user's own setting is left alone
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with TokensAhead(tokenizer, texts, 32):
        assert os.environ[PARALLELISM] == "true"
    assert os.environ[PARALLELISM] == "true"


def test_a_tokenizer_that_fails_ahead_fails_the_take(workspace):
    class Refusing:
        def __call__(self, *args, **kwargs):
            raise ValueError("this tokenizer refuses")

    with TokensAhead(Refusing(), ["a text"], 32) as ahead, pytest.raises(ValueError, match="refuses"):
        ahead.take(["a text"])


def test_encoding_beside_tokens_ahead_gives_the_same_rows_and_skips_cached_texts(workspace, monkeypatch):
    texts = thread_subset(2)["text"].tolist() + ["word " * 50]
    plain = EmbeddingService(EncoderSection(), 32, workspace / "plain_tokens", DEVICE)
    expected, expected_lengths = plain.embed(texts)
    service = EmbeddingService(EncoderSection(), 32, workspace / "tokens_ahead", DEVICE)
    service.embed(texts[:3])

    def not_here(*_args):
        raise AssertionError("tokenized in the main thread")

    with service.tokens_ahead(texts):
        assert len(service._ahead) == len(texts) - 3  # the cached ones are not tokenized again
        monkeypatch.setattr(encoder_module, "truncated_ids", not_here)  # every id comes from the thread
        vectors, lengths = service.embed(texts)
    assert service._ahead is None and service.stats.misses == len(texts)
    assert np.abs(vectors - expected).max() < 1e-5 and np.array_equal(lengths, expected_lengths)
    chunked = EmbeddingService(EncoderSection(long_texts="chunks"), 32, workspace / "chunks_ahead", DEVICE)
    with chunked.tokens_ahead(texts):  # windows are tokenized when they are encoded
        assert chunked._ahead is None


@pytest.mark.slow
def test_predict_reads_the_whole_text_with_chunks_and_the_prefix_with_truncate(workspace, small_data):
    common = {"classifier.lexical_features": False}
    chunked = train(workspace / "chunked", small_data, **{"encoder.long_texts": "chunks", **common})
    truncated = train(workspace / "truncated", small_data, **{"encoder.long_texts": "truncate", **common})
    assert chunked.architecture.encoder.long_texts == "chunks"
    assert chunked.meta.data.chunking["windows"] > chunked.meta.data.chunking["texts"]
    prefix = " ".join(["The government announced new measures on the economy today."] * 12)
    texts = [prefix + " The football club won the cup final.", prefix + " Shares in the tech firm fell."]
    probs = Predictor(chunked, workspace / "chunked", DEVICE).predict_proba(texts, 8)
    assert not np.allclose(probs[0], probs[1])  # the endings, beyond max_seq_len, reach the model
    probs = Predictor(truncated, workspace / "truncated", DEVICE).predict_proba(texts, 8)
    assert np.allclose(probs[0], probs[1])  # only the first 64 tokens are read


def test_balanced_class_weights_match_scikit_learn_and_weight_the_loss():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])
    ours = SingleLabel().balanced_weights(labels, 3)
    assert np.allclose(ours, compute_class_weight("balanced", classes=np.arange(3), y=labels))
    logits = torch.randn(9, 3, generator=torch.Generator().manual_seed(0))
    target = torch.from_numpy(labels)
    weighted = torch.nn.CrossEntropyLoss(weight=torch.tensor(ours, dtype=torch.float32))(logits, target)
    per_row = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    w = torch.tensor(ours, dtype=torch.float32)[target]
    assert torch.isclose(weighted, (per_row * w).sum() / w.sum())
    assert not torch.isclose(weighted, per_row.mean())


def test_the_trainer_uses_class_weights_only_when_asked(workspace, small_data):
    from bertcls.training.callbacks import WorkflowHooks
    from bertcls.training.preparation import prepare
    from bertcls.training.setup import make_trainer

    for choice, expect_weights in (("balanced", True), ("none", False)):
        settings = resolve_settings(
            {
                "output_root": str(workspace / "weights"),
                "data.data_file": str(small_data),
                "verbosity": 0,
                "model.max_seq_len": 64,
                "classifier.class_weights": choice,
            }
        ).settings
        run = prepare(settings, WorkflowHooks())
        trainer = make_trainer(settings, run.features, run.service, len(run.names))
        assert (trainer.loss_fn.weight is not None) == expect_weights


def test_switching_every_feature_off_gives_the_plain_embedding_head(workspace, small_data, tmp_path):
    ckpt = train(
        workspace / "plain",
        small_data,
        **{
            "classifier.lexical_features": False,
            "encoder.long_texts": "truncate",
            "classifier.standardize_inputs": False,
            "classifier.class_weights": "none",
        },
    )
    assert ckpt.architecture.lexical is None and ckpt.vocabularies == {}
    assert ckpt.architecture.encoder.long_texts == "truncate" and not ckpt.architecture.head.standardize
    assert all(key.startswith("head.net.") for key in ckpt.state)  # the keys of format 1's heads
    model, _ = build_classifier(ckpt, workspace / "plain", need_encoder=False)
    batch = {"embeddings": torch.randn(3, 384)}
    assert model(batch).shape == (3, len(ckpt.labels))  # no lexical input needed
