"""Precision: resolution from the hardware (an injected probe), the fp32 guard, the cache, checkpoints, threads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bertcls.config.settings import EncoderSection
from bertcls.features.service import EmbeddingService
from bertcls.model.encoder import truncated_ids, window_batches
from bertcls.runtime.precision import (
    MIN_COSINE,
    Hardware,
    PrecisionCheck,
    PrecisionGuard,
    compare,
    read_cpu_flags,
    resolve_precision,
)
from bertcls.runtime.precision import probe_hardware as precision_probe
from bertcls.runtime.verdicts import VERDICTS_FILE, MachineVerdicts, verdict_key
from tests.conftest import thread_subset

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def probe(*flags: str, cuda_bf16: bool = False):
    return lambda: Hardware(frozenset(flags), cuda_bf16)


def test_auto_picks_bf16_only_where_the_hardware_has_it():
    assert resolve_precision("auto", CPU, probe("avx512f", "avx512_bf16")) == "bf16"
    assert resolve_precision("auto", CPU, probe("avx512f", "amx_bf16")) == "bf16"
    assert resolve_precision("auto", CPU, probe("avx512f", "avx2")) == "fp32"
    assert resolve_precision("auto", CUDA, probe("avx512_bf16", cuda_bf16=False)) == "fp32"
    assert resolve_precision("auto", CUDA, probe(cuda_bf16=True)) == "bf16"
    assert resolve_precision("auto", torch.device("mps"), probe("avx512_bf16")) == "fp32"
    assert resolve_precision("fp16", CPU, probe()) == "fp16"  # an explicit choice is kept (and checked)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\nbugs\t\t: none\n")
    flags = read_cpu_flags(info)
    assert {"avx512f", "avx512_bf16"} <= flags and "none" not in flags
    assert Hardware(flags).cpu_bf16


def test_compare_keeps_a_faithful_precision_and_rejects_a_lossy_one():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 16)).astype(np.float32)
    labeller = lambda v: v.argmax(axis=1)  # noqa: E731
    close = compare("bf16", reference, reference + 1e-4 * rng.normal(size=reference.shape), labeller)
    assert close.used == "bf16" and close.passed and close.mean_cosine > MIN_COSINE and close.label_agreement == 1
    lossy = compare("bf16", reference, reference + 0.5 * rng.normal(size=reference.shape), labeller)
    assert lossy.used == "fp32" and not lossy.passed
    assert "mean cosine" in lossy.reason and lossy.label_agreement < 1


def test_a_checkpoint_checked_at_training_is_trusted_and_others_are_checked():
    checked = PrecisionCheck(requested="bf16", used="bf16", sample=200, mean_cosine=0.99999, label_agreement=1.0)
    rejected = PrecisionCheck(requested="bf16", used="fp32", sample=200, mean_cosine=0.9, label_agreement=0.9)
    bf16_cpu = probe("avx512_bf16")

    def resolve(record, choice):
        guard = PrecisionGuard.start(choice, CPU, record)
        return guard.precision, guard.pending

    import bertcls.runtime.precision as precision

    original = precision.probe_hardware
    precision.probe_hardware = bf16_cpu
    try:
        assert resolve(checked, "auto") == ("bf16", False)
        assert resolve(rejected, "auto") == ("fp32", False)
        assert resolve(None, "bf16") == ("bf16", True)
        assert resolve(PrecisionCheck(requested="fp32", used="fp32"), "bf16") == ("bf16", True)
        assert resolve(checked, "fp32") == ("fp32", False)
    finally:
        precision.probe_hardware = original


class DegradedEncoder:
    """The real encoder, made lossy below fp32 (a stand-in for hardware whose reduced precision is broken)."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.precision = "fp32"

    def embed(self, texts, batch_size, device, progress=None):
        self.encoder.precision = "fp32"
        vectors = self.encoder.embed(texts, batch_size, device, progress)
        if self.precision == "fp32":
            return vectors
        return np.random.default_rng(0).permutation(vectors)  # right shapes, wrong texts


def texts_and_labels(per_class: int = 8):
    frame = thread_subset(per_class, seed=3)
    codes = {name: i for i, name in enumerate(sorted(frame.category.unique()))}
    return frame.text.tolist(), frame.category.map(codes).to_numpy()


def test_guard_falls_back_to_fp32_when_the_reduced_precision_disagrees(workspace, caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # this degraded encoder's verdict is not the machine's
    service = EmbeddingService(EncoderSection(), 40, workspace, CPU, precision="bf16")  # its own cache folder
    service._encoder = DegradedEncoder(service.encoder)
    texts, labels = texts_and_labels()
    with caplog.at_level("WARNING"):
        check = service.check_precision(texts, labels)
    assert check.requested == "bf16" and check.used == "fp32" and check.label_agreement < 0.995
    assert service.precision == "fp32" and not service.cache.folder.name.endswith("_bf16")
    assert any("Falling back to fp32" in r.getMessage() for r in caplog.records)


def test_guard_passes_bf16_on_the_real_encoder_and_remembers_its_verdict(workspace):
    texts, labels = texts_and_labels()
    service = EmbeddingService(EncoderSection(), 64, workspace, CPU, precision="bf16")
    check = service.check_precision(texts, labels)
    assert check.used == "bf16" and check.mean_cosine >= MIN_COSINE and check.label_agreement >= 0.995
    again = EmbeddingService(EncoderSection(), 64, workspace, CPU, precision="bf16")
    assert again.check_precision(texts, labels) == check
    assert not again.encoder_loaded  # the stored verdict was used: no encoder pass


def test_a_new_output_root_on_the_same_machine_pays_no_guard(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    texts, labels = texts_and_labels()
    first = EmbeddingService(EncoderSection(), 56, tmp_path / "root-a", CPU, precision="bf16")
    check = first.check_precision(texts, labels)
    assert first.guard_source == "measured" and (tmp_path / "user-cache" / "bertcls" / VERDICTS_FILE).is_file()
    second = EmbeddingService(EncoderSection(), 56, tmp_path / "root-b", CPU, precision="bf16")
    assert second.check_precision(texts[:5], labels[:5]) == check  # any sample: the verdict is the machine's
    assert second.guard_source == "machine cache" and not second.encoder_loaded and second.precision == check.used


def test_the_verdict_key_tells_encoders_precisions_lengths_and_poolings_apart():
    base = ("fp-a", "bf16", 128, "mean", CPU)
    keys = {verdict_key(*base), verdict_key("fp-b", *base[1:]), verdict_key("fp-a", "fp16", *base[2:]),
            verdict_key("fp-a", "bf16", 64, "mean", CPU), verdict_key("fp-a", "bf16", 128, "cls", CPU)}  # fmt: skip
    assert len(keys) == 5 and verdict_key(*base) == verdict_key(*base)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"KEY": {"requested": 3}}'])
def test_a_damaged_verdict_cache_is_ignored_with_a_warning(tmp_path, monkeypatch, caplog, content):
    monkeypatch.setenv("BERTCLS_CACHE_DIR", str(tmp_path))
    texts, labels = texts_and_labels(2)
    service = EmbeddingService(EncoderSection(), 56, tmp_path / "root", CPU, precision="bf16")
    (tmp_path / VERDICTS_FILE).write_text(content.replace("KEY", service.verdict_key()))
    with caplog.at_level("WARNING"):
        check = service.check_precision(texts, labels)
    assert service.guard_source == "measured" and check.requested == "bf16"
    assert any("Ignoring" in r.getMessage() and "guard" in r.getMessage() for r in caplog.records)
    assert MachineVerdicts(tmp_path).get(service.verdict_key()) == check  # rewritten whole


def test_embedding_below_fp32_runs_a_copy_of_the_weights_in_that_dtype_made_again_when_they_change(workspace):
    service = EmbeddingService(EncoderSection(), 40, workspace / "held", CPU, precision="bf16")
    encoder = service.encoder
    texts, _ = texts_and_labels(1)
    ids, _ = truncated_ids(encoder.tokenizer, texts, 40)
    held = encoder.held_transformer(CPU)
    assert {p.dtype for p in held.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in encoder.parameters()} == {torch.float32}  # the weights training moves stay fp32
    assert set(encoder.state_dict()) == {f"transformer.{k}" for k in encoder.transformer.state_dict()}  # not saved
    vectors = encoder.embed_windows(ids, 4, CPU)
    assert encoder.held_transformer(CPU) is held  # made once
    batch = next(window_batches(ids, len(ids), encoder.tokenizer.pad_token_id))
    with torch.inference_mode():
        mask = torch.from_numpy(batch[2])
        hidden = held(input_ids=torch.from_numpy(batch[1]), attention_mask=mask).last_hidden_state
        by_hand = encoder.sentence_vectors(hidden.float(), mask).numpy()
    in_one_batch = encoder.embed_windows(ids, len(ids), CPU)  # the copy's numbers, not autocast's (1e-3 away)
    assert np.abs(in_one_batch[batch[0]] - by_hand).max() < 1e-6 and np.abs(vectors - in_one_batch).max() < 1e-2
    with torch.no_grad():
        encoder.transformer.embeddings.word_embeddings.weight.mul_(3.0)  # as a loaded state dict moves them
    assert encoder.held_transformer(CPU) is not held
    moved = encoder.embed_windows(ids, 4, CPU)
    assert not np.allclose(moved, vectors, atol=1e-3)
    encoder.train()  # a fused optimizer's step moves the weights without moving their version counters
    optimizer = torch.optim.AdamW(encoder.transformer.parameters(), lr=0.05, fused=True)
    batch = next(window_batches(ids, len(ids), encoder.tokenizer.pad_token_id))
    encoder({"input_ids": torch.from_numpy(batch[1]), "attention_mask": torch.from_numpy(batch[2])}).sum().backward()
    optimizer.step()
    assert not np.allclose(encoder.embed_windows(ids, 4, CPU), moved, atol=1e-3)
    encoder.precision = "fp32"
    assert encoder.held_transformer(CPU) is encoder.transformer


def test_cache_keeps_fp32_and_bf16_embeddings_apart(workspace):
    texts, _ = texts_and_labels(2)
    fp32 = EmbeddingService(EncoderSection(), 48, workspace, CPU, precision="fp32")
    bf16 = EmbeddingService(EncoderSection(), 48, workspace, CPU, precision="bf16")
    assert fp32.cache.folder != bf16.cache.folder and bf16.cache.folder.name.endswith("_bf16")
    a, _ = fp32.embed(texts)
    b, _ = bf16.embed(texts)
    assert fp32.stats.misses == len(texts) and bf16.stats.misses == len(texts)  # no cross-precision hits
    assert not np.array_equal(a, b) and np.allclose(a, b, atol=0.05)


@pytest.mark.slow
def test_training_records_the_precision_and_consumers_use_it(workspace, threads_small, cli, tmp_path):
    root = tmp_path / "bf16"
    code, out, err = cli(
        "train", "--output-root", root, "--data-file", threads_small, "--num-epochs", "2", "--precision", "bf16",
        "--max-seq-len", "64", "--verbosity", "0",
    )  # fmt: skip
    assert code == 0, err
    assert "Encoder precision: bf16 (checked against fp32" in " ".join(out.split())
    from bertcls.inference.prediction import Predictor
    from bertcls.model.checkpoint import load_named_checkpoint

    ckpt = load_named_checkpoint(None, root)
    assert ckpt.meta.precision.used == "bf16" and ckpt.meta.precision.sample > 0
    predictor = Predictor(ckpt, root, CPU, "bf16")
    assert predictor.encoder.precision == "bf16" and not predictor.guard.pending  # training checked it
    code, out, _ = cli("inspect", "--output-root", root)
    assert code == 0 and "bf16 (checked against fp32" in " ".join(out.split())
    code, _, err = cli("predict", "--output-root", root, "--data-file", threads_small, "--precision", "bf16")
    assert code == 0, err


def test_predicting_at_a_precision_training_did_not_check_runs_the_guard(trained_model, threads_small):
    from bertcls.inference.prediction import Predictor
    from bertcls.model.checkpoint import load_named_checkpoint

    ckpt = load_named_checkpoint(None, trained_model)
    ckpt.meta.precision = PrecisionCheck(requested="fp32", used="fp32")  # as if trained where bf16 was absent
    predictor = Predictor(ckpt, trained_model, CPU, "bf16")
    assert predictor.guard.pending
    texts = thread_subset(4, seed=5).text.tolist()
    probs = predictor.predict_proba(texts, 8)
    assert probs.shape == (len(texts), len(ckpt.labels))
    assert predictor.guard.verdict.sample == len(texts) and predictor.guard.verdict.used == "bf16"


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_threads_flag_sets_torch_threads(trained_model, threads_small, cli, threads):
    before = torch.get_num_threads()
    try:
        code, _, err = cli(
            "predict", "--output-root", trained_model, "--data-file", threads_small, "--threads", threads,
            "--output-file", "threads.csv",
        )  # fmt: skip
        assert code == 0, err
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def fine_tune_settings(root, data, **flags):
    from bertcls.config.sources import resolve_settings

    base = {"output_root": str(root), "data.data_file": str(data), "verbosity": 0, "encoder.freeze": False,
            "encoder.unfreeze_last_n_layers": 1, "model.max_seq_len": 32, "model.num_epochs": 1,
            "model.batch_size": 8, "model.precision": "bf16"}  # fmt: skip
    return resolve_settings({**base, **flags}).settings


def fine_tune_trainer(tmp_path, monkeypatch, per_class: int, **flags):
    """A prepared fine-tuning run on generated threads, and its trainer (nothing trained yet)."""
    from bertcls.training.callbacks import WorkflowHooks
    from bertcls.training.preparation import prepare
    from bertcls.training.setup import make_trainer

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    data = tmp_path / "ft.csv"
    thread_subset(per_class, seed=2).to_csv(data, index=False)
    settings = fine_tune_settings(tmp_path / "ft", data, **flags)
    run = prepare(settings, WorkflowHooks())
    return settings, run, make_trainer(settings, run.features, run.service, len(run.names))


@pytest.mark.slow
def test_a_fine_tuned_model_is_guarded_after_training_on_its_own_predictions(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    data = tmp_path / "ft.csv"
    thread_subset(10, seed=2).to_csv(data, index=False)
    root = tmp_path / "ft"
    code, out, err = cli("train", "--output-root", root, "--data-file", data, "--fine-tune", "--num-epochs", "1",
                         "--max-seq-len", "32", "--precision", "bf16", "--verbosity", "2")  # fmt: skip
    assert code == 0, err
    stages = [line.split("│")[1].strip() for line in out.splitlines() if line.count("│") == 3]
    checked = stages.index("Checking bf16 against fp32 on the fine-tuned model")
    assert stages.index("Training") < checked and "Checking bf16 against fp32" not in stages  # none before training
    from bertcls.model.checkpoint import load_named_checkpoint

    check = load_named_checkpoint(None, root).meta.precision
    rows = sum(len(pd.read_csv(root / "data" / f"{split}.csv")) for split in ("val", "train"))
    assert check.used == "bf16" and check.sample == rows and check.label_agreement >= 0.995  # val, then train
    assert not (tmp_path / "user-cache" / "bertcls" / VERDICTS_FILE).exists()  # these weights' verdict only
    code, out, _ = cli("inspect", "--output-root", root)
    assert code == 0 and "bf16 (checked against fp32" in " ".join(out.split())


@pytest.mark.slow
def test_a_fine_tuned_model_that_disagrees_below_fp32_falls_back_and_is_calibrated_again(tmp_path, monkeypatch):
    from bertcls.training.workflow import check_fine_tuned

    settings, run, trainer = fine_tune_trainer(tmp_path, monkeypatch, 10, **{"calibration.method": "temperature"})
    assert run.service.guard.pending  # nothing checked the pretrained encoder before fine-tuning
    trainer.fit()
    encoder = run.service.encoder  # the one training tuned, and the model's; below fp32 it now gives wrong vectors
    real_embed = encoder.embed

    def degraded(texts, batch_size, device, progress=None):
        wanted, encoder.precision = encoder.precision, "fp32"
        vectors = real_embed(texts, batch_size, device, progress)
        encoder.precision = wanted
        return vectors if wanted == "fp32" else np.random.default_rng(0).permutation(vectors)

    monkeypatch.setattr(encoder, "embed", degraded)
    trainer.calibration = None
    check_fine_tuned(settings, run, trainer)
    assert run.service.guard.verdict.used == "fp32" and run.service.precision == "fp32"
    assert trainer.model.encoder is encoder and encoder.precision == "fp32"  # what scoring and saving run at
    assert trainer.calibration is not None  # fitted again


@pytest.mark.slow
@pytest.mark.skipif(not precision_probe().cpu_bf16, reason="this CPU has no native bf16 (AVX512_BF16 or AMX)")
def test_bf16_fine_tuning_runs_forward_and_backward_in_bf16(tmp_path, monkeypatch):
    _, _, trainer = fine_tune_trainer(tmp_path, monkeypatch, 6, **{"model.precision": "auto"})
    seen: dict[str, torch.dtype] = {}
    query = trainer.model.encoder.transformer.encoder.layer[-1].attention.self.query

    def forward(module, inputs, output) -> None:
        seen.setdefault("forward", output.dtype)
        output.register_hook(lambda grad: seen.update(backward=grad.dtype))  # the gradient reaching it

    query.register_forward_hook(forward)
    trainer.model.train()
    trainer._step(np.arange(8))
    assert seen == {"forward": torch.bfloat16, "backward": torch.bfloat16}
    assert query.weight.dtype == torch.float32 and query.weight.grad.dtype == torch.float32  # fp32 master weights
