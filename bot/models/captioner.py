"""Captioner role: BLIP through transformers, a batch of images in, a batch of captions out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image


class Captioner(Protocol):
    model_id: str

    def caption(self, images: Sequence[Image.Image]) -> list[str]: ...


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
    ) -> None:
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

    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        if not images:
            return []
        kwargs = {"text": [self.prompt] * len(images)} if self.prompt else {}
        inputs = self.processor(images=list(images), return_tensors="pt", **kwargs)
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype, non_blocking=True)
        generate_kwargs = {
            "pixel_values": pixel_values,
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": False,  # same image, same caption
        }
        if self.prompt:
            generate_kwargs["input_ids"] = inputs["input_ids"].to(self.device)
            generate_kwargs["attention_mask"] = inputs["attention_mask"].to(self.device)
        output = self.model.generate(**generate_kwargs)
        captions = self.processor.batch_decode(output, skip_special_tokens=True)
        return [" ".join(text.split()) for text in captions]
