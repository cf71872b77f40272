"""bertcls's CPU dropout and attention for fine-tuning: the same distribution as torch's dropout, the same outputs
as SDPA when nothing is dropped, and exactly SDPA outside training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bertcls.model.fast_dropout import ATTENTION, FastDropout, attention, fast_dropout, kept, use_fast_dropout


def test_fast_dropout_drops_p_of_the_elements_and_scales_the_rest():
    torch.manual_seed(0)
    x = torch.ones(1_000_000, requires_grad=True)
    for p in (0.1, 0.35):
        out = fast_dropout(x, p)
        survivors = out != 0
        assert abs(survivors.float().mean().item() - (1 - p)) < 0.002  # 1e6 draws: sd 0.0005
        assert torch.allclose(out[survivors], torch.full_like(out[survivors], 1 / (1 - p)))
    out.sum().backward()  # the gradient flows through the kept elements only, scaled as they are
    assert torch.equal(x.grad != 0, survivors)
    assert torch.allclose(x.grad[survivors], torch.full_like(x.grad[survivors], 1 / 0.65))
    assert fast_dropout(x, 0.0) is x and not fast_dropout(x, 1.0).any() and not fast_dropout(x, 0.999999).any()
    odd = torch.ones(7, 5).t()  # 35 elements (not a multiple of 4), not contiguous
    assert fast_dropout(odd, 0.5).shape == (5, 7)


def test_the_seed_decides_the_mask_and_evaluation_drops_nothing():
    x = torch.randn(64, 128)
    torch.manual_seed(3)
    first = fast_dropout(x, 0.1)
    torch.manual_seed(3)
    assert torch.equal(first, fast_dropout(x, 0.1))
    layer = FastDropout(0.1)
    assert torch.equal(layer.eval()(x), x) and not torch.equal(layer.train()(x), x)


def test_the_mask_is_written_in_the_tensors_precision_and_bf16_is_scaled_exactly():
    torch.manual_seed(4)
    mask = kept(torch.Size([1000, 1000]), 0.25, torch.bfloat16)
    assert mask.dtype == torch.bfloat16 and set(mask.unique().tolist()) == {0.0, 1.0}
    assert abs(mask.float().mean().item() - 0.75) < 0.002
    x = torch.randn(100_000).abs().add(0.1).bfloat16()
    out = fast_dropout(x, 0.1)
    kept_here = out != 0
    # what fp32 would give, rounded once: a scaling held in a bf16 mask (1.109375 for 1/0.9) would miss it
    assert torch.equal(out, (x.float() * kept_here * (1.0 / 0.9)).bfloat16())
    assert abs(kept_here.float().mean().item() - 0.9) < 0.005


def encoder_inputs():
    from bertcls.config.settings import EncoderSection
    from bertcls.model.encoder import Encoder, resolve_encoder_folder

    encoder = Encoder(resolve_encoder_folder(EncoderSection(), "."), 32, "mean")
    texts = ["a short one", "a much longer text than the first one, padded to the same length"]
    return encoder, encoder.tokenize(texts)


@pytest.mark.slow
def test_the_attention_equals_sdpa_where_nothing_is_dropped(tmp_path):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    encoder, features = encoder_inputs()
    reference = encoder.eval()(features)
    assert use_fast_dropout(encoder.transformer) and encoder.transformer.config._attn_implementation == ATTENTION
    assert not any(type(m) is nn.Dropout for m in encoder.transformer.modules())
    assert torch.equal(encoder.eval()(features), reference)  # evaluation runs SDPA as before
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 12, 9, 32) for _ in range(3))
    mask = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    mask[0, :, :, 6:] = False  # the first sequence is padded after 6 tokens
    module = nn.Module()
    module.is_causal = False  # an encoder's self-attention
    expected, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, q, k, v, mask, dropout=0.0, scaling=0.2)
    eager, _ = attention(module, q, k, v, mask, dropout=1e-12, scaling=0.2)  # the training path, keeping all
    assert torch.allclose(eager, expected, atol=1e-5)


def test_the_attention_takes_every_mask_and_keeps_the_softmax_in_fp32_under_bf16():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 12, 9, 32) for _ in range(3))
    module, sdpa = nn.Module(), ALL_ATTENTION_FUNCTIONS["sdpa"]
    module.is_causal = False  # an encoder's self-attention
    additive = torch.zeros(2, 1, 9, 9)
    additive[1, :, :, 4:] = torch.finfo(torch.float32).min  # the second sequence padded after 4 tokens
    for mask in (None, additive):
        expected, _ = sdpa(module, q, k, v, mask, dropout=0.0, scaling=None)
        eager, _ = attention(module, q, k, v, mask, dropout=1e-12, scaling=None)
        assert torch.allclose(eager, expected, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _ = sdpa(module, q, k, v, None, dropout=0.0, scaling=None)
        eager, _ = attention(module, q, k, v, None, dropout=1e-12, scaling=None)
    assert torch.allclose(eager.float(), expected.float(), atol=2e-2)
    causal = nn.Module()  # no is_causal: SDPA reads it as causal, so it is never taken off SDPA
    torch.manual_seed(2)
    first, _ = attention(causal, q, k, v, None, dropout=0.5, scaling=None)
    torch.manual_seed(2)
    assert torch.equal(first, sdpa(causal, q, k, v, None, dropout=0.5, scaling=None)[0])


def test_the_attention_drops_its_weights_as_the_textbook_formula_values_and_gradients():
    torch.manual_seed(5)
    q, k, v = (torch.randn(2, 12, 9, 32, requires_grad=True) for _ in range(3))
    module = nn.Module()
    module.is_causal = False  # an encoder's self-attention
    additive = torch.zeros(2, 1, 9, 9)
    additive[0, :, :, 6:] = torch.finfo(torch.float32).min  # the first sequence padded after 6 tokens
    upstream = torch.randn(2, 9, 12, 32)
    torch.manual_seed(11)
    ours, _ = attention(module, q, k, v, additive, dropout=0.1, scaling=0.2)
    ours_grads = torch.autograd.grad((ours * upstream).sum(), (q, k, v))
    torch.manual_seed(11)  # the same seed draws the same mask (one torch draw seeds it)
    mask = kept(torch.Size([2, 12, 9, 9]), 0.1, torch.float32)
    assert 0.85 < mask.mean().item() < 0.95 and set(mask.unique().tolist()) == {0.0, 1.0}
    weights = torch.softmax(q @ k.transpose(2, 3) * 0.2 + additive, dim=-1)
    textbook = ((weights * mask / 0.9) @ v).transpose(1, 2)
    textbook_grads = torch.autograd.grad((textbook * upstream).sum(), (q, k, v))
    assert torch.allclose(ours, textbook, atol=1e-5)
    for mine, theirs in zip(ours_grads, textbook_grads, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-4)
    nothing, _ = attention(module, q, k, v, additive, dropout=1.0, scaling=0.2)
    assert nothing.shape == ours.shape and not nothing.any()
