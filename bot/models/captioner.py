"""Captioner role: BLIP through transformers, a batch of images in, a batch of captions out."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from bot.models.static_decode import (
    Decoder,
    DecoderSetting,
    StaticBlipDecoder,
    resolve_decoder,
    unsupported_generation_settings,
)

log = logging.getLogger(__name__)


class Captioner(Protocol):
    model_id: str

    def caption(self, images: Sequence[Image.Image]) -> list[str]: ...


class SplitCaptioner(Captioner, Protocol):
    """A captioner whose CPU preprocessing can run apart from (and ahead of) the model."""

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor: ...

    def caption_pixels(self, pixel_values: torch.Tensor) -> list[str]: ...


class BlipCaptioner:
    """``Salesforce/blip-image-captioning-base`` (or any BLIP captioning checkpoint folder)."""

    def __init__(
        self,
        path: Path,
        *,
        model_id: str,
        device: torch.device,
        dtype: torch.dtype,
        max_new_tokens: int = 20,
        num_beams: int = 1,
        prompt: str = "",
        cpu_int8: bool = False,
        decoder: DecoderSetting = "generate",
    ) -> None:
        """``cpu_int8``: opt-in dynamic int8 quantisation of every Linear layer when running on the CPU
        (weights stored as int8, activations quantised per batch). Measured in bench/results/roles_cpu.md:
        the text decoder, which re-reads all its weights for every token, gets much faster; captions
        may differ slightly from float32 ones, hence opt-in. Ignored on CUDA, where bf16 is the tool.

        ``decoder`` (``models.captioner.decoder``): ``generate`` (transformers), ``static`` (a pre-allocated
        KV cache, :mod:`bot.models.static_decode`), ``graphs`` (that, replayed as CUDA graphs; ``static``
        without CUDA) or ``auto`` (``graphs`` on CUDA, ``generate`` elsewhere). All give the same greedy
        tokens; the static ones exist for GPU throughput (launch overhead, not arithmetic, dominates there)."""
        from transformers import BlipForConditionalGeneration, BlipProcessor

        from bot.models.sdpa import enable_blip_sdpa

        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.prompt = prompt
        self.processor = BlipProcessor.from_pretrained(str(path))
        model = BlipForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
        # transformers' BLIP only has eager attention; SDPA gives identical outputs, faster.
        enable_blip_sdpa(model)
        self.model = model.to(device).eval()
        self.int8 = False
        if cpu_int8:
            self._quantize_int8()
        self.decoder: Decoder = resolve_decoder(decoder, device)
        self._static: dict[bool, StaticBlipDecoder] = {}  # by "graphs", built on first use
        self._logged: set[str] = set()

    def _quantize_int8(self) -> None:
        if self.device.type != "cpu" or self.dtype != torch.float32:
            log.warning("captioner int8 quantisation needs a float32 model on the CPU; ignored on %s/%s",
                        self.device, self.dtype)
            return
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # Per-channel weight scales: on the real MiniLM (same BERT layers as BLIP's decoder) they keep
        # embeddings at cosine >= 0.97 of float32, where one scale per tensor dropped to 0.93.
        with warnings.catch_warnings():  # torch.ao's eager quantisation is deprecated in favour of torchao
            warnings.simplefilter("ignore")
            quantize_dynamic(
                self.model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
            )
        self.int8 = True

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CPU-side resize + normalise to BLIP's pixel values, float32 ``(n, 3, H, W)`` on the CPU.

        Kept apart from :meth:`caption_pixels` so the inference queue can run it in its decode
        threads, overlapping the previous batch's model compute instead of adding to it.
        """
        return self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        if not images:
            return []
        return self.caption_pixels(self.preprocess(images))

    @torch.inference_mode()
    def caption_pixels(self, pixel_values: torch.Tensor) -> list[str]:
        """Greedy captions for a batch of :meth:`preprocess` output (on the CPU or already on the device)."""
        if int(pixel_values.shape[0]) == 0:
            return []
        captions = self.processor.batch_decode(self.generate_ids(pixel_values), skip_special_tokens=True)
        return [" ".join(text.split()) for text in captions]

    @torch.inference_mode()
    def generate_ids(self, pixel_values: torch.Tensor, *, decoder: Decoder | None = None) -> torch.Tensor:
        """Token ids (bos and prompt included) for a batch of pixel values, from this captioner's decoder
        or the one named (tests and the GPU bench compare them on the same model)."""
        count = int(pixel_values.shape[0])
        pixels = pixel_values.to(self.device, non_blocking=True).to(self.dtype)
        input_ids = attention_mask = None
        if self.prompt:
            prompt = self.processor.tokenizer(
                [self.prompt] * count, return_tensors="pt", return_token_type_ids=False
            )
            input_ids = prompt["input_ids"].to(self.device)
            attention_mask = prompt["attention_mask"].to(self.device)
        chosen = decoder or self.decoder
        if chosen != "generate":
            # The text decoder's config: BLIP's generate passes everything on to text_decoder.generate.
            config = self.model.text_decoder.generation_config
            unsupported = unsupported_generation_settings(config, num_beams=self.num_beams)
            if unsupported:
                self._log_once(f"captioner decoder {chosen!r} does not reproduce {', '.join(unsupported)}: "
                               "transformers' generate runs instead")
                chosen = "generate"
        if chosen == "generate":
            kwargs = {} if input_ids is None else {"input_ids": input_ids, "attention_mask": attention_mask}
            return self.model.generate(
                pixel_values=pixels, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                do_sample=False,  # same image, same caption
                **kwargs,
            )
        return self._static_decoder(graphs=chosen == "graphs").generate(
            pixels, input_ids, attention_mask, max_new_tokens=self.max_new_tokens
        )

    def _static_decoder(self, *, graphs: bool) -> StaticBlipDecoder:
        """The static decoder for the current model (rebuilt if the model object was replaced)."""
        static = self._static.get(graphs)
        if static is None or static.model is not self.model:
            static = self._static[graphs] = StaticBlipDecoder(self.model, graphs=graphs)
        return static

    def _log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.info("%s", message)
