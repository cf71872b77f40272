"""Training with the real encoder: quality, reproducibility, the embedding cache, fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_explained, assert_served_like_predict, thread_subset

from bertcls.config.sources import resolve_settings
from bertcls.inference.batches import score_source
from bertcls.model.checkpoint import load_checkpoint
from bertcls.training.callbacks import WorkflowHooks
from bertcls.training.preparation import prepare
from bertcls.training.setup import make_trainer
from bertcls.training.workflow import run_training


def settings_for(root, data_file, **flags):
    base = {"output_root": str(root), "data.data_file": str(data_file), "verbosity": 0, "model.max_seq_len": 128}
    return resolve_settings({**base, **flags}).settings


def test_frozen_training_reaches_f1_09_on_the_threads(trained_model):
    ckpt = load_checkpoint(trained_model / "best_trials" / "best_model.pt")
    assert ckpt.meta.metrics["test"]["f1"] >= 0.9
    assert ckpt.labels == ["account", "billing", "feedback", "shipping", "technical"]
    assert ckpt.meta.stop_reason and ckpt.meta.history[0].epoch == 1
    assert all((trained_model / "data" / f"{s}.csv").is_file() for s in ("train", "val", "test"))
    assert ckpt.meta.data.truncation["fraction"] > 0.9  # most threads run past 128 tokens


def test_second_run_hits_the_cache_and_is_reproducible(trained_model, threads_small):
    settings = settings_for(trained_model, threads_small)
    first = [e.model_dump() for e in load_checkpoint(trained_model / "best_trials" / "best_model.pt").meta.history]
    outcome = run_training(settings)
    assert outcome.cache_misses == 0 and outcome.cache_hits == 300
    assert not outcome.encoder_loaded  # no encoder forward pass at all
    assert outcome.result.history_dicts()[-1]["f1"] == first[-1]["f1"]
    assert [r["train_loss"] for r in outcome.result.history_dicts()] == [r["train_loss"] for r in first]


def test_embeddings_equal_sentence_transformers(trained_model):
    from sentence_transformers import SentenceTransformer

    from bertcls.model.encoder import Encoder

    folder = trained_model / "bert_encoder"
    texts = ["A short one.", "Markets rallied after the central bank held rates steady for a third month."]
    ours = Encoder(folder, 128, "mean").embed(texts, 8, torch.device("cpu"))
    reference = SentenceTransformer(str(folder), device="cpu")
    reference.max_seq_length = 128
    assert np.allclose(ours, reference.encode(texts), atol=1e-5)


@pytest.mark.slow
def test_fine_tuning_lowers_the_loss_and_round_trips(workspace, tmp_path):
    from bertcls.model.checkpoint import build_classifier, save_checkpoint
    from bertcls.model.network import trainable_state
    from bertcls.runtime.memory import reuse_freed_memory
    from bertcls.training.saving import TrainedModel, checkpoint_meta

    data = tmp_path / "ft.csv"
    thread_subset(8, seed=1).to_csv(data, index=False)
    settings = settings_for(
        workspace / "ft",
        data,
        **{
            "encoder.freeze": False,
            "encoder.unfreeze_last_n_layers": 1,
            "model.max_seq_len": 32,
            "model.num_epochs": 3,
            "model.batch_size": 8,
            "optimizer.lr": 3e-3,
            "optimizer.warmup_ratio": 0.0,
        },
    )
    run = prepare(settings, WorkflowHooks())
    names, service, features = run.names, run.service, run.features
    reuse_freed_memory.cache_clear()
    trainer = make_trainer(settings, features, service, len(names))
    kept = reuse_freed_memory.cache_info().currsize == 1  # CPU fine-tuning keeps freed memory for its next step
    assert kept == (service.device.type == "cpu")
    train = features.sources["train"]
    before = score_source(trainer.model, train, service.device)["loss"]
    trainable = {n for n, p in trainer.model.encoder.named_parameters() if p.requires_grad}
    assert trainable and all("layer.5." in n for n in trainable)
    result = trainer.fit()
    after = score_source(trainer.model, train, service.device)["loss"]
    assert after < before
    meta = checkpoint_meta(TrainedModel(settings, service, names, features, trainer.model, result), {})
    path = save_checkpoint(tmp_path / "ft.pt", trainable_state(trainer.model), meta, features.lexical)
    ckpt = load_checkpoint(path)
    assert any(k.startswith("encoder.") for k in ckpt.state) and ckpt.architecture.lexical is not None
    assert ckpt.architecture.encoder.fine_tuned and not ckpt.architecture.head.standardize
    restored, encoder = build_classifier(ckpt, settings.root)
    encoder.precision = service.precision  # the precision is the predictor's choice; the weights are what matter
    batch = train.batch(np.arange(4), service.device)
    trainer.model.eval()
    with torch.inference_mode():
        assert torch.equal(trainer.model(batch), restored(batch))
    assert_served_like_predict(settings.root, str(path), thread_subset(2, seed=4).text.tolist())
    assert_explained(settings.root, str(path), thread_subset(1, seed=4).text.iloc[0])


def test_frozen_checkpoint_round_trip_gives_identical_logits(trained_model, tmp_path):
    from bertcls.features.lexical import sparse_batch
    from bertcls.model.checkpoint import build_classifier, save_checkpoint

    ckpt = load_checkpoint(trained_model / "best_trials" / "best_model.pt")
    model_a, _ = build_classifier(ckpt, trained_model, need_encoder=False)
    state = {k: v.clone() for k, v in ckpt.state.items()}
    copy = save_checkpoint(tmp_path / "copy.pt", state, ckpt.meta, ckpt.lexical_features())
    model_b, _ = build_classifier(load_checkpoint(copy), trained_model, need_encoder=False)
    lexical = ckpt.lexical_features().transform(["stocks fell", "the match", "a new film", "MPs vote", "gadgets"] * 2)
    batch = {
        "embeddings": torch.randn(10, 384, generator=torch.Generator().manual_seed(0)),
        "lexical": sparse_batch(lexical, np.arange(10), torch.device("cpu")),
    }
    with torch.inference_mode():
        logits = model_a(batch)
        assert torch.equal(logits, model_b(batch))
    head_state = {k[len("head.") :]: v for k, v in ckpt.state.items() if k.startswith("head.")}
    assert head_state and all(torch.equal(model_a.head.state_dict()[k], v) for k, v in head_state.items())


@pytest.mark.slow
def test_train_command_end_to_end(cli, workspace, threads_small):
    root = workspace / "cli-train"
    code, out, err = cli(
        "train",
        "--output-root",
        root,
        "--data-file",
        threads_small,
        "--num-epochs",
        "3",
        "--batch-size",
        "32",
        "--verbosity",
        "1",
        "--max-seq-len",
        "128",
    )
    assert code == 0, err
    assert "macro F1" in out and "test" in out and "best_model.pt" in out
    assert (root / "best_trials" / "best_model.pt").is_file()
    logs = list((root / "logs").glob("train_*.log"))
    assert logs and "Resolved configuration" in logs[0].read_text()


def test_hidden_size_mismatch_is_a_clear_error(cli, workspace, threads_small):
    code, _, err = cli(
        "train", "--output-root", workspace / "trained", "--data-file", threads_small, "--verbosity", "0"
    )
    assert code == 0
    (workspace / "mm.yml").write_text("classifier:\n  bert_hidden_size: 768\n")
    code, _, err = cli(
        "train",
        "--config",
        workspace / "mm.yml",
        "--output-root",
        workspace / "trained",
        "--data-file",
        threads_small,
        "--verbosity",
        "0",
        "--max-seq-len",
        "128",
    )
    assert code == 2 and "bert_hidden_size: 384" in err


def test_unreachable_hub_id_says_how_to_use_a_local_folder(tmp_path):
    from bertcls.config.settings import EncoderSection
    from bertcls.model.encoder import resolve_encoder_folder
    from bertcls.runtime.errors import BertclsError

    with pytest.raises(BertclsError, match="local folder"):
        resolve_encoder_folder(EncoderSection(name_or_path="some-org/some-model"), tmp_path)
