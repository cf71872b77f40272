"""Numeric precision of the encoder pass: which one the hardware runs natively, and a guard that checks a reduced
precision against fp32 on real texts before it is trusted."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

logger = logging.getLogger(__name__)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_COSINE = 0.999
MIN_LABEL_AGREEMENT = 0.995
GUARD_SAMPLE = 256


@dataclass(frozen=True)
class Hardware:
    """What the machine offers for reduced precision (an injectable probe result, so tests can pose as any CPU)."""

    cpu_flags: frozenset[str]
    cuda_bf16: bool = False

    @property
    def cpu_bf16(self) -> bool:
        return any(flag in self.cpu_flags for flag in NATIVE_CPU_BF16_FLAGS)


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags (Linux /proc/cpuinfo), plus torch's own view of the vector unit (e.g. ``amx``)."""
    flags: set[str] = set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    capability = torch.backends.cpu.get_cpu_capability().lower()
    if "amx" in capability:
        flags.add("amx_bf16")
    return frozenset(flags)


def probe_hardware() -> Hardware:
    cuda_bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return Hardware(read_cpu_flags(), cuda_bf16)


def resolve_precision(choice: str, device: torch.device, probe: Callable[[], Hardware] = probe_hardware) -> str:
    """``auto``: bf16 on a CPU with native bf16 (AVX512_BF16 or AMX) or a CUDA GPU that supports it, else fp32. An
    explicit choice is kept (it is still checked by the guard)."""
    if choice != "auto":
        return choice
    if device.type == "mps":
        return "fp32"
    hardware = probe()
    native = hardware.cuda_bf16 if device.type == "cuda" else hardware.cpu_bf16
    return "bf16" if native else "fp32"


def autocast(device: torch.device, precision: str):
    """The context the encoder runs under: autocast to bf16/fp16 (weights stay fp32), or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


class PrecisionCheck(BaseModel):
    """What the guard measured and decided; stored in checkpoints."""

    model_config = ConfigDict(extra="forbid")

    requested: str
    used: str
    device: str = "cpu"
    sample: int = 0
    mean_cosine: float | None = None
    label_agreement: float | None = None
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.used == self.requested


def nearest_centroid(reference: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A labeller for the guard when no model exists yet: the nearest class mean of the fp32 sample (cosine)."""
    classes = np.unique(labels)
    centroids = np.stack([reference[labels == c].mean(axis=0) for c in classes])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)

    def predict(vectors: np.ndarray) -> np.ndarray:
        normed = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return classes[(normed @ centroids.T).argmax(axis=1)]

    return predict


def compare(
    precision: str, reference: np.ndarray, reduced: np.ndarray, labeller: Callable[[np.ndarray], np.ndarray]
) -> PrecisionCheck:
    """Mean cosine of the two embeddings and the share of identical labels; below either bar, fall back to fp32."""
    ref = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    red = reduced / np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)
    cosine = float((ref * red).sum(axis=1).mean())
    agreement = float((labeller(reference) == labeller(reduced)).mean())
    check = PrecisionCheck(
        requested=precision, used=precision, sample=len(reference), mean_cosine=cosine, label_agreement=agreement
    )  # the caller sets ``device``
    if cosine < MIN_COSINE or agreement < MIN_LABEL_AGREEMENT:
        check.used = "fp32"
        check.reason = (
            f"{precision} embeddings agree with fp32 at mean cosine {cosine:.5f} (needs {MIN_COSINE}) and give the "
            f"same label for {100 * agreement:.1f}% of {len(reference)} texts (needs {100 * MIN_LABEL_AGREEMENT:.1f}%)"
        )
    return check


def measure(
    encoder,
    texts: list[str],
    precision: str,
    device: torch.device,
    batch_size: int,
    labeller: Callable[[np.ndarray], np.ndarray] | None = None,
    labels: np.ndarray | None = None,
) -> tuple[PrecisionCheck, np.ndarray]:
    """Embed ``texts`` with ``encoder`` at fp32 and at ``precision`` and :func:`compare` them; the labels come from
    ``labeller`` (a trained model) or the nearest class mean of ``labels``. Returns the verdict and the reduced
    precision's embeddings; the encoder is left at ``precision``."""
    try:
        encoder.precision = "fp32"
        reference = encoder.embed(texts, batch_size, device)
    finally:
        encoder.precision = precision
    reduced = encoder.embed(texts, batch_size, device)
    check = compare(precision, reference, reduced, labeller or nearest_centroid(reference, np.asarray(labels)))
    check.device = device.type
    return check, reduced


@dataclass
class PrecisionGuard:
    """The one decision about running the encoder below fp32. It starts from the precision asked for (``auto``
    resolved for the device) and is pending until the guard's measurement (or a trusted record) gives a verdict;
    ``precision`` is what to run at now. fp32 needs no check."""

    requested: str
    verdict: PrecisionCheck | None = None

    @classmethod
    def start(cls, requested: str, device: torch.device, trusted: PrecisionCheck | None = None) -> PrecisionGuard:
        """``trusted``: a saved model's own check, which settles the same precision on the same kind of device."""
        precision = resolve_precision(requested, device)
        if precision == "fp32":
            return cls(precision, PrecisionCheck(requested="fp32", used="fp32"))
        if trusted is not None and trusted.requested == precision and trusted.sample and trusted.device == device.type:
            return cls(precision, trusted)
        return cls(precision)

    @property
    def pending(self) -> bool:
        return self.verdict is None

    @property
    def precision(self) -> str:
        return self.requested if self.verdict is None else self.verdict.used

    def decide(self, check: PrecisionCheck) -> None:
        self.verdict = check

    def record(self) -> PrecisionCheck:
        """What a checkpoint records: the verdict (or, still pending, the precision asked for)."""
        return self.verdict or PrecisionCheck(requested=self.requested, used=self.requested)


def describe(check: PrecisionCheck | None) -> str:
    """One line for people: the precision used and what the guard measured."""
    if check is None:
        return "fp32 (not recorded: made before precision was chosen)"
    if check.mean_cosine is None:  # fp32, or a fine-tuned trial saved unchecked (checked on its first texts)
        return check.used if check.used == "fp32" else f"{check.used} (not checked yet: checked on first use)"
    agreement = check.label_agreement or 0.0
    measured = f"mean cosine {check.mean_cosine:.5f}, same label {100 * agreement:.1f}% of {check.sample} texts"
    if check.passed:
        return f"{check.used} (checked against fp32: {measured})"
    return f"fp32 ({check.requested} rejected: {measured})"


def log_check(check: PrecisionCheck) -> None:
    if check.used != check.requested:
        logger.warning("Falling back to fp32: %s.", check.reason)
    elif check.mean_cosine is not None:
        logger.info(
            "%s checked against fp32 on %d texts: mean cosine %.5f, same label %.1f%%",
            check.used,
            check.sample,
            check.mean_cosine,
            100 * (check.label_agreement or 0.0),
        )


def sample_indices(count: int, seed: int, size: int = GUARD_SAMPLE) -> np.ndarray:
    """Which texts the guard embeds twice: a seeded random sample of at most ``size``."""
    if count <= size:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))


def apply_threads(num_threads: int | None) -> int:
    """Set torch's intra-op threads when asked; unset keeps torch's own default (one per physical core, or
    ``OMP_NUM_THREADS``). Returns the number in effect."""
    if num_threads:
        torch.set_num_threads(num_threads)
    return torch.get_num_threads()
