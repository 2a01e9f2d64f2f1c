"""Greedy BLIP captioning with a static (pre-allocated) KV cache, optionally replayed as CUDA graphs.

Why: on a GPU, ``model.generate`` spends ~20 ms per generated token at batch 512 on BLIP's text
decoder, most of it launch overhead (hundreds of small kernels per token, each launched from
Python) and the dynamic cache that grows by concatenation every step. Here every decoding step has
the same tensor shapes and writes its keys/values in place, so one step can be captured once as a
CUDA graph and replayed per token: one launch instead of hundreds.

What is reproduced, so captions stay token-for-token those of ``BlipForConditionalGeneration.generate``
(greedy, ``num_beams=1``):

- the prompt handling of BLIP's ``generate``: no prompt means ``[bos]``; a tokenised prompt has its
  first token replaced by bos and its last ([SEP]) dropped;
- the prefill: the whole prompt in one pass with the same causal mask transformers builds, then one
  token per step; the LM head sees only the last position (``logits_to_keep=1``);
- the text layer exactly as ``BlipTextLayer`` runs it (self-attention, cross-attention over the
  image tokens, feed-forward), calling the model's own Linear/LayerNorm modules; attention is SDPA
  when the model's text attention is the SDPA patch of :mod:`bot.models.sdpa`, else transformers'
  eager arithmetic; cross-attention keys/values are computed once per batch (as the patch does);
- greedy choice on float32 logits, ``min_new_tokens`` / ``min_length`` (eos masked to -inf until
  then), finished rows emitting pad, stopping once every row has emitted [SEP] or after
  ``max_new_tokens``.

The one difference: self-attention runs over the whole pre-allocated cache with an additive mask
(0 for filled slots, the dtype's minimum elsewhere) instead of over exactly the filled prefix.
Masked slots contribute exact zeros, but a longer reduction may sum the real terms in another order,
so logits can differ in the last bit; a greedy token changes only on a near-tie. Tests
(tests/test_static_decode.py) check token identity on CPU; bench/bench_gpu.py counts differing
captions on a GPU in float32 and bfloat16.

``generate(cache_implementation="static")`` is not an option: in transformers 5.23 BLIP's text
decoder only wraps a *dynamic* cache into its self/cross-attention pair, so a StaticCache receives
the image tokens as if they were self-attention keys and generate fails with an IndexError.

CUDA graphs (``graphs=True``): one graph per batch bucket (1, 2, 3, 4, 6, 8, 12, ... : at most a
third of a batch is padding), captured lazily the first time a bucket is used. All buckets share one
workspace (sized for the largest bucket so far; a bucket uses its first rows) and one memory pool:
every value a step must keep is written into the workspace, so graphs never read another graph's
temporaries and may replay in any order. The workspace stays allocated between batches: for
BLIP-base at bucket 512 in bfloat16 about 10.5 GiB, nearly all of it the image tokens' keys/values
(which ``generate`` also holds, but only while a batch runs). A capture that fails turns graphs off
with a warning; decoding goes on with the eager loop. Manual ``torch.cuda.CUDAGraph`` capture rather than
``torch.compile(mode="reduce-overhead")``: no compile time (minutes per shape for 12 BERT layers),
no recompiles per batch size, no graph breaks on the per-instance SDPA patches and queue hooks, and
the replayed step is exactly the function the eager static loop calls, so the CPU tests of that
loop test the arithmetic a GPU replays.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

#: What ``models.captioner.decoder`` may say; ``auto`` resolves to ``graphs`` on CUDA, else ``generate``.
DecoderSetting = Literal["auto", "generate", "static", "graphs"]
#: What a captioner actually runs.
Decoder = Literal["generate", "static", "graphs"]

#: Batch buckets a captured graph is made for: powers of two and 1.5x powers of two.
_BUCKETS = tuple(sorted({2**k for k in range(15)} | {3 * 2**k for k in range(14)}))

#: Generation-config fields whose non-neutral value would add a logits processor or a stopping rule
#: this decoder does not reproduce (value: the neutral ones). ``min_length``/``min_new_tokens`` are handled;
#: ``num_beams`` and ``do_sample`` are not read from the config because the captioner passes them to ``generate``.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "num_return_sequences": (None, 1),
    "penalty_alpha": (None,),
    "guidance_scale": (None, 1, 1.0),
    "sequence_bias": (None,),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "remove_invalid_values": (None, False),
    "exponential_decay_length_penalty": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "renormalize_logits": (None, False),
    "watermarking_config": (None,),
    "max_time": (None,),
    "stop_strings": (None,),
    "prompt_lookup_num_tokens": (None,),
    "dola_layers": (None,),
}


def resolve_decoder(setting: str, device: torch.device) -> Decoder:
    """The decoder a captioner on ``device`` runs for a ``models.captioner.decoder`` setting.

    ``auto``: CUDA graphs on a GPU, transformers' ``generate`` elsewhere (the CPU default stays exactly
    what it was). ``graphs`` without CUDA: the static-cache loop, said once in the log, never an error,
    so one config file serves GPU and CPU hosts.
    """
    if setting == "auto":
        return "graphs" if device.type == "cuda" else "generate"
    if setting == "graphs" and device.type != "cuda":
        log.info("captioner decoder 'graphs' needs CUDA; on %s the static-cache loop runs instead", device)
        return "static"
    if setting not in ("generate", "static", "graphs"):
        raise ValueError(f"unknown captioner decoder {setting!r}")
    return setting  # type: ignore[return-value]


def unsupported_generation_settings(generation_config: Any, *, num_beams: int = 1) -> list[str]:
    """Generation settings (``name=value``) this decoder would not reproduce; empty when it can run.

    Checked per call, so a setting changed after loading (the benchmarks force ``min_new_tokens``)
    is seen; anything listed makes the captioner use ``generate`` for that batch.
    """
    found = [] if num_beams == 1 else [f"num_beams={num_beams}"]
    for name, neutral in _NEUTRAL.items():
        value = getattr(generation_config, name, None)
        if not any(value is ok or (ok is not None and value == ok) for ok in neutral):
            found.append(f"{name}={value!r}")
    return found


def bucket_size(count: int) -> int:
    """The captured-graph batch a batch of ``count`` rows is padded to."""
    for size in _BUCKETS:
        if size >= count:
            return size
    return count


def _run_pre_hooks(module: torch.nn.Module) -> None:
    """Run ``module``'s forward pre-hooks without running the module.

    The inference queue's preemption checkpoints are forward pre-hooks on the text decoder's layers
    (``Analyzer.set_yield_point``). This decoder calls a layer's parts, not the layer, so it calls
    the hooks itself: a background batch can still pause between layers (eager loop) or between
    tokens (graph replay) as it does inside ``generate``.
    """
    with_kwargs = getattr(module, "_forward_pre_hooks_with_kwargs", {})
    for hook_id, hook in tuple(module._forward_pre_hooks.items()):
        if hook_id in with_kwargs:
            hook(module, (), {})
        else:
            hook(module, ())


@dataclass
class StepBuffers:
    """Everything one decoding step reads and writes. A step only mutates these tensors in place, so a
    captured graph (which bakes their addresses in) stays valid for every later replay.

    ``position``, ``generated``, ``out`` and ``alive`` are shared by all rows; the rest has one row per
    image (a graph bucket's rows are the first rows of the workspace).
    """

    tokens: torch.Tensor  # (B, 1) long: the token fed to this step
    position: torch.Tensor  # (1,) long: the cache slot (and position id) of that token
    generated: torch.Tensor  # (1,) long: tokens generated so far = the column of ``out`` this step writes
    mask: torch.Tensor  # (B, 1, 1, T) model dtype: additive self-attention mask, 0 = filled slot
    keys: list[torch.Tensor]  # per layer (B, heads, T, head_size): self-attention cache
    values: list[torch.Tensor]
    cross_keys: list[torch.Tensor]  # per layer (B, heads, S, head_size): image tokens, fixed per batch
    cross_values: list[torch.Tensor]
    unfinished: torch.Tensor  # (B,) bool: has not emitted eos yet
    out: torch.Tensor  # (B, N) long: generated tokens
    alive: torch.Tensor  # (N,) bool: alive[j] = some row still unfinished after token j+1

    def rows(self, count: int) -> StepBuffers:
        """Views of the first ``count`` rows (shared scalars and history stay shared)."""
        return replace(
            self,
            tokens=self.tokens[:count], mask=self.mask[:count],
            keys=[k[:count] for k in self.keys], values=[v[:count] for v in self.values],
            cross_keys=[k[:count] for k in self.cross_keys], cross_values=[v[:count] for v in self.cross_values],
            unfinished=self.unfinished[:count], out=self.out[:count],
        )

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor, for checks that a step moved none of them."""
        return [self.tokens, self.position, self.generated, self.mask, *self.keys, *self.values,
                *self.cross_keys, *self.cross_values, self.unfinished, self.out, self.alive]


@dataclass(frozen=True)
class _Plan:
    """The static facts of one call that shapes and captured graphs depend on."""

    prompt_len: int  # L: bos + prompt tokens
    max_new: int  # N
    suppress_eos_below: int  # eos masked while fewer tokens than this have been generated
    dtype: torch.dtype
    device: torch.device
    image_tokens: int  # S

    @property
    def cache_len(self) -> int:
        """T: cache slots; the last generated token is never fed back, so L + N - 1."""
        return self.prompt_len + self.max_new - 1


@dataclass
class _Workspace:
    """Graph mode: buffers for ``capacity`` rows, the graphs captured on them, their shared memory pool."""

    plan: _Plan
    capacity: int
    buffers: StepBuffers
    graphs: dict[int, Callable[[], None]] = field(default_factory=dict)
    pool: Any = None


#: ``capture(step, warmup, pool) -> replay``: how a bucket's step becomes something to replay.
Capture = Callable[[Callable[[], None], Callable[[], None], Any], Callable[[], None]]


def cuda_graph_capture(step: Callable[[], None], warmup: Callable[[], None], pool: Any) -> Callable[[], None]:
    """Capture ``step`` (a pure function of static buffers) as a CUDA graph; returns its replay.

    ``warmup`` (the step from a valid starting state) runs on a side stream first, so cuBLAS/SDPA
    kernel selection and lazy workspaces happen outside the capture, as PyTorch requires;
    ``thread_local`` capture lets the queue's other threads keep using CUDA meanwhile.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            warmup()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        step()
    return graph.replay


class StaticBlipDecoder:
    """Greedy decoding of a ``BlipForConditionalGeneration`` with a static KV cache (see the module doc).

    ``graphs``: replay each decoding step as a CUDA graph (CUDA only; elsewhere the eager static loop
    runs, said once in the log). ``capture`` replaces :func:`cuda_graph_capture` (tests drive the graph
    path on the CPU with a capture that returns the step itself: same buffers, same driving loop).
    ``check_every``: steps between host reads of "all rows finished" (each read is a device sync;
    steps run past the end only emit pad and are cut off, so the output does not depend on it).
    """

    def __init__(
        self,
        model: Any,
        *,
        graphs: bool = False,
        capture: Capture | None = None,
        check_every: int | None = None,
    ) -> None:
        from bot.models.sdpa import _text_sdpa_forward

        self.model = model
        text_config = model.config.text_config
        self.bos, self.eos, self.pad = text_config.bos_token_id, text_config.sep_token_id, text_config.pad_token_id
        self.max_positions = int(text_config.max_position_embeddings)
        self.text = model.text_decoder
        self.layers = list(self.text.bert.encoder.layer)
        first = self.layers[0].attention.self
        self.heads, self.head_size = first.num_attention_heads, first.attention_head_size
        self.scale = 1.0 / math.sqrt(self.head_size)
        # Mirror whichever attention ``generate`` would run: the SDPA patch, or transformers' eager math.
        self.sdpa = all(
            getattr(getattr(module.self, "forward", None), "__func__", None) is _text_sdpa_forward
            for layer in self.layers for module in (layer.attention, layer.crossattention)
        )
        device = next(model.parameters()).device
        if graphs and capture is None and device.type != "cuda":
            log.info("CUDA graphs need a CUDA device (the captioner is on %s): static-cache loop instead", device)
            graphs = False
        self.graphs = graphs
        self.capture = capture or cuda_graph_capture
        self.check_every = check_every or (4 if device.type == "cuda" else 1)
        self.captures = 0  # graphs captured so far (a test and the bench read it)
        self._workspace: _Workspace | None = None
        # Held for a whole graph-mode call. Never waited for: a call that finds it taken (a batch that
        # preempted a paused one, which still holds the workspace) decodes on private buffers.
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ public

    @torch.inference_mode()
    def generate(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int,
    ) -> torch.Tensor:
        """Token ids, prompt included: what ``model.generate(pixel_values, input_ids, attention_mask,
        max_new_tokens=..., num_beams=1, do_sample=False)`` returns."""
        if attention_mask is not None and not bool(attention_mask.all()):
            # Padded prompts never come from the captioner (one prompt for the whole batch).
            raise ValueError("the static decoder needs unpadded prompts (an all-ones attention_mask)")
        count = int(pixel_values.shape[0])
        image_embeds = self.model.vision_model(pixel_values=pixel_values)[0]
        if input_ids is None:
            prompt = torch.full((count, 1), self.bos, dtype=torch.long, device=image_embeds.device)
        else:
            prompt = input_ids[:, :-1].to(image_embeds.device, torch.long).clone()
            prompt[:, 0] = self.bos
        # BLIP's generate hands everything to ``text_decoder.generate``: the text decoder's generation
        # config is the one that counts (the outer model's is never read).
        config = self.text.generation_config
        prompt_len = int(prompt.shape[1])
        plan = _Plan(
            prompt_len=prompt_len, max_new=int(max_new_tokens),
            suppress_eos_below=max(int(config.min_new_tokens or 0), int(config.min_length or 0) - prompt_len),
            dtype=image_embeds.dtype, device=image_embeds.device, image_tokens=int(image_embeds.shape[1]),
        )
        if plan.max_new < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if plan.cache_len > self.max_positions:
            raise ValueError(f"prompt ({prompt_len} tokens) + max_new_tokens ({plan.max_new}) exceed the text "
                             f"decoder's {self.max_positions} positions")
        generated = None
        if self.graphs and plan.max_new > 1 and self._lock.acquire(blocking=False):
            try:
                generated = self._decode_graphs(plan, prompt, image_embeds)
            finally:
                self._lock.release()
        if generated is None:
            generated = self._decode_eager(plan, prompt, image_embeds)
        return torch.cat([prompt, generated], dim=1)

    # ------------------------------------------------------------------ the two drivers

    def _decode_eager(self, plan: _Plan, prompt: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Private buffers for exactly this batch (re-entrant: nothing shared between calls)."""
        count = int(prompt.shape[0])
        buffers = self._allocate(plan, count, cross=False)
        cross = self._prefill(plan, buffers, prompt, image_embeds, copy_cross=False)
        buffers.cross_keys, buffers.cross_values = cross
        return self._drive(plan, buffers, count, lambda: self._step(plan, buffers, hooks=True))

    def _decode_graphs(self, plan: _Plan, prompt: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor | None:
        """Shared workspace, one captured step per bucket; the caller holds ``_lock``. None when the
        capture failed: graphs are then off for good (a warning with the error) and the eager loop runs."""
        count = int(prompt.shape[0])
        bucket = bucket_size(count)
        workspace = self._workspace
        if workspace is None or workspace.plan != plan or workspace.capacity < bucket:
            # A new shape or a bigger bucket: drop the old graphs and buffers first (GPU memory), then
            # buffers for this bucket; smaller buckets are captured again on their first rows.
            self._workspace = workspace = None
            pool = torch.cuda.graph_pool_handle() if plan.device.type == "cuda" else None
            workspace = _Workspace(plan, bucket, self._allocate(plan, bucket, cross=True), pool=pool)
            self._workspace = workspace
        buffers = workspace.buffers.rows(bucket)
        replay = workspace.graphs.get(bucket)
        if replay is None:
            try:
                replay = self._capture_bucket(plan, workspace, buffers)
            except Exception:
                log.warning("captioner: capturing a CUDA graph failed; decoding without graphs from now on",
                            exc_info=True)
                self.graphs, self._workspace = False, None
                return None
            workspace.graphs[bucket] = replay
        self._prefill(plan, buffers, prompt, image_embeds, copy_cross=True)
        return self._drive(plan, buffers, count, replay, yield_between=True)

    def _capture_bucket(self, plan: _Plan, workspace: _Workspace, buffers: StepBuffers) -> Callable[[], None]:
        """Capture the step for one bucket, before this call's prefill (which then resets every counter).

        The captured step runs without the preemption hooks: Python does not run at replay, and a pause
        inside a capture would stall it. Warm-up steps start from a valid state each time (slot L, the
        second generated column) so they never index past the buffers, whatever the buffers held.
        """

        def warmup() -> None:
            buffers.position.fill_(plan.prompt_len)
            buffers.generated.fill_(1)
            self._step(plan, buffers, hooks=False)

        def step() -> None:
            self._step(plan, buffers, hooks=False)

        replay = self.capture(step, warmup, workspace.pool)
        self.captures += 1
        log.debug("captioner: captured a decoding step for batch bucket %d (%d tokens max)",
                  buffers.tokens.shape[0], plan.max_new)
        return replay

    def _drive(
        self, plan: _Plan, buffers: StepBuffers, count: int, step: Callable[[], None], *, yield_between: bool = False
    ) -> torch.Tensor:
        """Run decoding steps after the prefill until every row finished or N tokens exist.

        "Every row finished" is read from the device every ``check_every`` steps; steps run after that
        only append pad, and the output is cut at the first token after which no row was unfinished,
        exactly where ``generate`` (which checks every step) stops.
        """
        done = 1  # the prefill produced the first token
        while done < plan.max_new:
            if done % self.check_every == 0 and not bool(buffers.alive[done - 1]):
                break
            if yield_between:
                _run_pre_hooks(self.layers[0])  # one preemption checkpoint per replayed token
            step()
            done += 1
        alive = buffers.alive[:done].tolist()
        length = alive.index(False) + 1 if False in alive else done
        return buffers.out[:count, :length].clone()

    # ------------------------------------------------------------------ buffers

    def _allocate(self, plan: _Plan, rows: int, *, cross: bool) -> StepBuffers:
        device, dtype, layers = plan.device, plan.dtype, len(self.layers)
        shape = (rows, self.heads, plan.cache_len, self.head_size)
        cross_keys: list[torch.Tensor] = []
        cross_values: list[torch.Tensor] = []
        if cross:
            cross_keys = [self._cross_buffer(plan, rows) for _ in range(layers)]
            cross_values = [self._cross_buffer(plan, rows) for _ in range(layers)]
        return StepBuffers(
            tokens=torch.full((rows, 1), self.pad, dtype=torch.long, device=device),
            position=torch.zeros(1, dtype=torch.long, device=device),
            generated=torch.zeros(1, dtype=torch.long, device=device),
            mask=torch.full((rows, 1, 1, plan.cache_len), torch.finfo(dtype).min, dtype=dtype, device=device),
            keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)],
            values=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)],
            cross_keys=cross_keys, cross_values=cross_values,
            unfinished=torch.zeros(rows, dtype=torch.bool, device=device),
            out=torch.full((rows, plan.max_new), self.pad, dtype=torch.long, device=device),
            alive=torch.zeros(plan.max_new, dtype=torch.bool, device=device),
        )

    def _cross_buffer(self, plan: _Plan, rows: int) -> torch.Tensor:
        """Image-token keys or values with the strides ``generate`` gives attention: the SDPA patch keeps
        the Linear output (rows, S, heads, head_size) viewed head-major; transformers' eager attention
        keeps a contiguous copy from its cache."""
        if self.sdpa:
            shape = (rows, plan.image_tokens, self.heads, self.head_size)
            return torch.zeros(shape, dtype=plan.dtype, device=plan.device).transpose(1, 2)
        shape = (rows, self.heads, plan.image_tokens, self.head_size)
        return torch.zeros(shape, dtype=plan.dtype, device=plan.device)

    # ------------------------------------------------------------------ the model's arithmetic

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        return states.view(*states.shape[:-1], -1, self.head_size).transpose(1, 2)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """Attention as the model's text attention computes it: the SDPA patch's call, or transformers'
        eager ``BlipTextSelfAttention`` arithmetic."""
        if self.sdpa:
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0,
                                                     scale=self.scale)
            batch, _, length, _ = context.shape
            return context.transpose(1, 2).reshape(batch, length, -1)
        scores = torch.matmul(query, key.transpose(-1, -2))
        scores = scores / math.sqrt(self.head_size)
        if mask is not None:
            scores = scores + mask
        context = torch.matmul(torch.softmax(scores, dim=-1), value)
        context = context.permute(0, 2, 1, 3).contiguous()
        return context.view(*context.shape[:2], -1)

    def _layer(self, index: int, hidden: torch.Tensor, self_kv: tuple[torch.Tensor, torch.Tensor],
               mask: torch.Tensor, cross_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``BlipTextLayer.forward`` given this layer's self-attention keys/values (cache included)."""
        from transformers.pytorch_utils import apply_chunking_to_forward

        layer = self.layers[index]
        query = self._split_heads(layer.attention.self.query(hidden))
        attention = layer.attention.output(self._attend(query, *self_kv, mask), hidden)
        query = self._split_heads(layer.crossattention.self.query(attention))
        attention = layer.crossattention.output(self._attend(query, *cross_kv, None), attention)
        return apply_chunking_to_forward(
            layer.feed_forward_chunk, layer.chunk_size_feed_forward, layer.seq_len_dim, attention
        )

    def _prefill(
        self, plan: _Plan, buffers: StepBuffers, prompt: torch.Tensor, image_embeds: torch.Tensor, *,
        copy_cross: bool,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The prompt in one pass (eager, once per batch): fills cache slots [0, L), computes the image
        tokens' keys/values, picks the first token and resets every shared counter. Rows past the
        prompt's (a graph bucket's padding) start finished, so they never keep decoding alive.

        Returns the cross-attention keys/values per layer (copied into ``buffers`` when ``copy_cross``).
        """
        count, length = int(prompt.shape[0]), plan.prompt_len
        rows = buffers.rows(count)
        min_value = torch.finfo(plan.dtype).min
        # The causal mask transformers builds for the prompt (materialised, one per row).
        causal = torch.full((length, length), min_value, dtype=plan.dtype, device=plan.device).triu(1)
        causal = causal.expand(count, 1, length, length).contiguous()
        hidden = self.text.bert.embeddings(input_ids=prompt)
        cross_keys, cross_values = [], []
        for index, layer in enumerate(self.layers):
            _run_pre_hooks(layer)
            attention = layer.attention.self
            # Contiguous, as generate's dynamic cache (a concatenation) hands them to attention.
            key = self._split_heads(attention.key(hidden)).contiguous()
            value = self._split_heads(attention.value(hidden)).contiguous()
            rows.keys[index][:, :, :length].copy_(key)
            rows.values[index][:, :, :length].copy_(value)
            cross = layer.crossattention.self
            cross_key = self._split_heads(cross.key(image_embeds))
            cross_value = self._split_heads(cross.value(image_embeds))
            if not self.sdpa:  # the eager path caches (copies) them; the SDPA patch keeps the views
                cross_key, cross_value = cross_key.contiguous(), cross_value.contiguous()
            if copy_cross:
                rows.cross_keys[index].copy_(cross_key)
                rows.cross_values[index].copy_(cross_value)
                cross_key, cross_value = rows.cross_keys[index], rows.cross_values[index]
            cross_keys.append(cross_key)
            cross_values.append(cross_value)
            hidden = self._layer(index, hidden, (key, value), causal, (cross_key, cross_value))
        logits = self.text.cls(hidden[:, -1:, :])[:, -1, :]
        buffers.mask.fill_(min_value)
        buffers.mask[..., :length] = 0
        buffers.unfinished.fill_(False)
        buffers.unfinished[:count] = True
        buffers.tokens.fill_(self.pad)
        buffers.position.fill_(length)  # the next token fed goes to slot L
        buffers.generated.zero_()
        self._pick(plan, rows, logits)
        return cross_keys, cross_values

    def _pick(self, plan: _Plan, buffers: StepBuffers, logits: torch.Tensor) -> None:
        """Greedy choice and bookkeeping, all in place on ``buffers`` (so it can be part of a graph)."""
        scores = logits.float()
        if plan.suppress_eos_below > 0:
            scores[:, self.eos].masked_fill_(buffers.generated < plan.suppress_eos_below, -math.inf)
        chosen = torch.where(buffers.unfinished, scores.argmax(dim=-1), self.pad)
        buffers.out.index_copy_(1, buffers.generated, chosen.view(-1, 1))
        buffers.unfinished.logical_and_(chosen != self.eos)
        buffers.alive.index_copy_(0, buffers.generated, buffers.unfinished.any().view(1))
        buffers.tokens.copy_(chosen.view(-1, 1))
        buffers.generated.add_(1)

    def _step(self, plan: _Plan, buffers: StepBuffers, *, hooks: bool) -> None:
        """One decoding step: a pure function of ``buffers`` (reads them, writes them in place, keeps
        nothing else), which is what makes it capturable as a CUDA graph and replayable per token.
        ``hooks``: run the layers' preemption hooks (eager loop; never inside a capture)."""
        hidden = self.text.bert.embeddings(input_ids=buffers.tokens, position_ids=buffers.position.view(1, 1))
        buffers.mask.index_fill_(3, buffers.position, 0)
        for index, layer in enumerate(self.layers):
            if hooks:
                _run_pre_hooks(layer)
            keys, values = buffers.keys[index], buffers.values[index]
            attention = layer.attention.self
            keys.index_copy_(2, buffers.position, self._split_heads(attention.key(hidden)))
            values.index_copy_(2, buffers.position, self._split_heads(attention.value(hidden)))
            hidden = self._layer(index, hidden, (keys, values), buffers.mask,
                                 (buffers.cross_keys[index], buffers.cross_values[index]))
        self._pick(plan, buffers, self.text.cls(hidden)[:, -1, :])
        buffers.position.add_(1)
