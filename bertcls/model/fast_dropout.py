"""Dropout that costs less on a CPU while an encoder is fine-tuned.

torch's CPU dropout draws one random number per element (``bernoulli_``): in a MiniLM training step at batch 16 and
128 tokens that was 14% of the step's CPU time in the profiler (attention probabilities alone are 3 million elements
per layer). Here one 64-bit draw makes four 16-bit slices, each compared with ``p``: the same distribution to within
1/65536 of ``p``, at a quarter of the draws, from numpy's PCG64DXSM seeded from torch's generator (so
``torch.manual_seed`` still decides it). The comparison writes a float mask directly, and the attention's scalings go
on its small tensors: a further 8% off the step. Only training on a CPU takes this path; evaluation, and every other
device, run exactly as before."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)
ATTENTION = "bertcls_cpu_training"  # the transformers attention implementation registered below
_SLICES = 65536
_NOTHING_KEPT = 1.0 - 0.5 / _SLICES  # from this rate on nothing is kept (and the threshold would not fit in 16 bits)


def uniform16(count: int) -> torch.Tensor:
    """``count`` uniform 16-bit integers from numpy's PCG64DXSM (about twice as fast as torch's CPU generator
    here), seeded with one draw from torch's generator, so that ``torch.manual_seed`` still decides them."""
    seed = int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).item())
    raw = np.random.PCG64DXSM(seed).random_raw((count + 3) // 4)
    return torch.from_numpy(raw.view(np.int16)[:count])


def kept(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """A mask of ``shape`` in ``dtype`` on the CPU: 0 for each element dropped with probability ``p`` (to within
    1/65536), 1 for the others; the comparison writes the floats itself (a boolean mask converted after costs
    four times as much)."""
    mask = torch.empty(shape, dtype=dtype, device="cpu")
    return torch.ge(uniform16(math.prod(shape)).view(shape), round(p * _SLICES) - _SLICES // 2, out=mask)


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each element of a CPU tensor with probability ``p`` (to within 1/65536) and scale the rest by
    ``1 / (1 - p)``. In fp32 the mask holds the scaling (scaling the mask, then one product with ``x``, forward and
    backward); in a lower precision the scaling is applied after the product (it would round in the mask)."""
    if p <= 0.0:
        return x
    if p >= _NOTHING_KEPT:
        return x * 0.0
    scale, mask = 1.0 / (1.0 - p), kept(x.shape, p, x.dtype)
    return x * mask.mul_(scale) if x.dtype == torch.float32 else (x * mask).mul_(scale)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` that takes :func:`fast_dropout` while training on a CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.device.type == "cpu":
            return fast_dropout(x, self.p)
        return super().forward(x)


def attention(module: nn.Module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """A transformers attention function: while training on a CPU with attention dropout, the eager computation,
    its weights multiplied by a :func:`kept` mask and its output by ``1 / (1 - p)``; otherwise PyTorch's scaled
    dot-product attention, as the model ran before. Under bf16 the query's and the output's scalings round in bf16
    (at most 2^-9 of each value, as in SDPA's math path, which scales the query and the key in their own dtype); the
    softmax is taken in fp32."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    plain = getattr(module, "is_causal", True) is False and query.size(1) == key.size(1)  # as SDPA reads it; no GQA
    extras = kwargs.get("is_causal") or any(kwargs.get(k) is not None for k in ("position_bias", "softcap", "s_aux"))
    if dropout <= 0.0 or query.device.type != "cpu" or not plain or extras:
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                              scaling=scaling, **kwargs)  # fmt: skip
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.size(-1))
    # The scalings go on the small tensors (the query; the output), not on the scores, which are tokens / head_dim
    # times larger (4x at 128 tokens): (q * s) k^T = s (q k^T), and dropping from the weights before scaling their
    # product by 1 / (1 - p) is the same as scaling the kept weights.
    scores = torch.matmul(query * scale, key.transpose(2, 3)).float()  # the softmax in fp32, as SDPA's math path
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # the SDPA mask: True where a token may be attended to
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = scores.softmax(dim=-1)
    rescale = 1.0 / (1.0 - dropout) if dropout < _NOTHING_KEPT else 0.0  # 0: nothing is kept
    if rescale:
        weights = weights * kept(scores.shape, dropout, weights.dtype)
    output = torch.matmul(weights.to(value.dtype), value).mul_(rescale).transpose(1, 2).contiguous()
    return output, None


def register_attention() -> None:
    """Make :func:`attention` known to transformers (with the SDPA mask), once."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use_fast_dropout(transformer: nn.Module) -> bool:
    """Swap the transformer's dropout for :class:`FastDropout` and its attention for :func:`attention`, where its
    attention runs through PyTorch's SDPA today (the only one :func:`attention` stands in for) and this version of
    transformers can register an attention function. Returns whether the attention was swapped (the dropout
    modules are swapped either way)."""
    config = getattr(transformer, "config", None)
    for parent in list(transformer.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace))
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", ATTENTION):
        return False
    try:
        register_attention()
        transformer.set_attn_implementation(ATTENTION)  # type: ignore[operator]  # a PreTrainedModel method
    except (ImportError, AttributeError, ValueError) as exc:  # an older transformers: SDPA's own dropout stays
        logger.debug("Attention dropout stays torch's: %s", exc)
        return False
    return getattr(config, "_attn_implementation", None) == ATTENTION
