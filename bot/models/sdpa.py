"""Scaled-dot-product attention for BLIP, vision tower and text decoder.

transformers' BLIP refuses ``attn_implementation="sdpa"`` and runs eager attention (two matmuls and
a softmax materialising the score matrix per head). ``torch.nn.functional.scaled_dot_product_attention``
computes the same thing with fused kernels:

- vision tower (577x577 scores per head): on an H100 the encoder went from 1,441 to 3,531 img/s with
  identical outputs;
- text decoder (self-attention over the caption so far, cross-attention over the 577 image tokens at
  every generated token): fused kernels, plus the cross-attention keys/values are kept as computed
  instead of being copied into the cache (transformers concatenates them onto an empty tensor, which
  on the CPU means writing 24 fresh 14 MB buffers per batch of 8). Greedy captions are token-for-token
  identical (tests/test_models.py); CPU numbers in bench/results/roles_cpu.md.

Patched per instance, never globally. The decoder patch follows transformers 5's cache API
(``EncoderDecoderCache``); on other versions it is skipped with a log line and eager attention stays.
"""

from __future__ import annotations

import inspect
import logging
import math
import types

import torch
import torch.nn.functional as F

try:  # transformers 5's cache classes; without them the text decoder is left as it is
    from transformers.cache_utils import DynamicLayer, EncoderDecoderCache
except ImportError:  # pragma: no cover - older transformers
    DynamicLayer = EncoderDecoderCache = None

log = logging.getLogger(__name__)


def _vision_sdpa_forward(self, hidden_states: torch.Tensor, **_: object) -> tuple[torch.Tensor, None]:
    bsz, tgt_len, embed_dim = hidden_states.size()
    qkv = (
        self.qkv(hidden_states)
        .reshape(bsz, tgt_len, 3, self.num_heads, embed_dim // self.num_heads)
        .permute(2, 0, 3, 1, 4)
    )
    dropout = self.dropout.p if self.training else 0.0
    context = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=dropout, scale=self.scale)
    context = context.permute(0, 2, 1, 3).reshape(bsz, tgt_len, self.embed_dim)
    # Attention probabilities are not materialised (that is the point); callers asking for
    # output_attentions get None, which BLIP's encoder tolerates.
    return self.projection(context), None


def _text_sdpa_forward(
    self,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    past_key_values: object | None = None,
    **_: object,
) -> tuple[torch.Tensor, None]:
    """``BlipTextSelfAttention.forward`` with SDPA; same cache protocol as transformers 5's eager one."""
    head_size = self.attention_head_size
    query = self.query(hidden_states).view(*hidden_states.shape[:-1], -1, head_size).transpose(1, 2)
    is_cross = encoder_hidden_states is not None
    mask = encoder_attention_mask if is_cross else attention_mask

    cache, cross_cached = past_key_values, False
    if isinstance(past_key_values, EncoderDecoderCache):
        cross_cached = bool(past_key_values.is_updated.get(self.layer_idx))
        cache = past_key_values.cross_attention_cache if is_cross else past_key_values.self_attention_cache

    if is_cross and cross_cached:
        layer = cache.layers[self.layer_idx]
        key, value = layer.keys, layer.values
    else:
        source = encoder_hidden_states if is_cross else hidden_states
        kv_shape = (*source.shape[:-1], -1, head_size)
        key = self.key(source).view(kv_shape).transpose(1, 2)
        value = self.value(source).view(kv_shape).transpose(1, 2)
        if cache is not None and is_cross and isinstance(past_key_values, EncoderDecoderCache):
            # The image tokens never change during generation: keep these tensors as they are
            # (the eager path copies them into the cache once per layer).
            layer = cache.layers[self.layer_idx]
            if not layer.is_initialized:
                layer.lazy_initialization(key, value)
            layer.keys, layer.values = key, value
            past_key_values.is_updated[self.layer_idx] = True
        elif cache is not None:
            key, value = cache.update(key, value, self.layer_idx)

    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(query.dtype)  # transformers' additive float mask (0 / dtype-min)
    dropout = self.dropout.p if self.training else 0.0
    context = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=1.0 / math.sqrt(head_size)
    )
    context = context.transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size)
    return context, None


def _text_patch_supported() -> bool:
    """True when transformers' BLIP text attention speaks the cache API the patch reproduces."""
    from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

    if EncoderDecoderCache is None:
        return False
    parameters = inspect.signature(BlipTextSelfAttention.forward).parameters
    return "past_key_values" in parameters and hasattr(DynamicLayer, "lazy_initialization")


def enable_blip_sdpa(model: torch.nn.Module, *, text: bool = True) -> int:
    """Swap BLIP's attention forwards for SDPA ones; returns how many modules were patched.

    Vision: every ``BlipAttention``. Text (``text=True``): every ``BlipTextSelfAttention`` of the
    decoder, self- and cross-attention, when the installed transformers has the expected cache API.
    """
    from transformers.models.blip.modeling_blip import BlipAttention
    from transformers.models.blip.modeling_blip_text import BlipTextSelfAttention

    patch_text = text and _text_patch_supported()
    if text and not patch_text:
        log.info("BLIP text decoder keeps eager attention: this transformers version's cache API is not the one"
                 " the SDPA patch reproduces")
    patched = 0
    for module in model.modules():
        if isinstance(module, BlipAttention):
            module.forward = types.MethodType(_vision_sdpa_forward, module)
            patched += 1
        elif patch_text and isinstance(module, BlipTextSelfAttention):
            module.forward = types.MethodType(_text_sdpa_forward, module)
            patched += 1
    return patched
