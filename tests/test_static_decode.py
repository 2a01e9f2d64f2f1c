"""The static-cache BLIP decoder (bot/models/static_decode.py) gives ``generate``'s tokens, exactly.

Models are tiny random-weight BLIPs saved with ``save_pretrained`` and loaded through
:class:`BlipCaptioner` (the production path, SDPA patch on). The stand-in of bot/models/tiny.py
captions every picture alike and never stops early, which would let a wrong cross-attention or a
wrong eos rule pass unseen; the variant here has sharper cross-attention (captions depend on the
picture) and a picture-dependent [SEP] logit (captions end at different lengths). Tests assert that
both really happen, so none of them passes vacuously.

The CUDA graph path cannot be captured on a CPU. What can be checked here is checked: the graph
driver (shared workspace, batch buckets with padded rows, lazy capture per bucket, one device read
every few steps) runs the very step function a capture records, with a capture that returns the step
itself, and that step is checked to keep every buffer where it was (what a replay relies on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageOps

from bot.config import CaptionerSettings, ConfigError, load_settings
from bot.imaging import decode_image
from bot.models.captioner import BlipCaptioner
from bot.models.static_decode import (
    StaticBlipDecoder,
    bucket_size,
    resolve_decoder,
    unsupported_generation_settings,
)

CPU = torch.device("cpu")
PROMPT = "a picture of"
SEP, PAD = 3, 0  # the tiny vocabulary's [SEP] (eos) and [PAD]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny stand-in, made image-dependent and early-stopping, saved as a checkpoint folder."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from bot.models.tiny import write_tiny_blip

    source, folder = tmp_path_factory.mktemp("tiny-blip"), tmp_path_factory.mktemp("varied-blip")
    write_tiny_blip(source)
    model = BlipForConditionalGeneration.from_pretrained(str(source)).eval()
    with torch.no_grad():
        for layer in model.text_decoder.bert.encoder.layer:
            cross = layer.crossattention
            for linear in (cross.self.query, cross.self.key, cross.self.value, cross.output.dense):
                linear.weight.mul_(10)
        head = model.text_decoder.cls.predictions
        head.decoder.weight[SEP].mul_(10)  # tied to the [SEP] embedding, which is never an input
        head.decoder.bias[SEP] = head.bias[SEP] = -1.0
    model.save_pretrained(str(folder))
    BlipProcessor.from_pretrained(str(source)).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def images(photos: dict[str, bytes]) -> list[Image.Image]:
    pictures = [decode_image(data).image for data in photos.values()]
    return (pictures + [ImageOps.mirror(picture) for picture in pictures])[:8]


def make_captioner(folder: Path, *, decoder: str = "static", prompt: str = "", max_new_tokens: int = 16,
                   ) -> BlipCaptioner:
    return BlipCaptioner(folder, model_id="varied", device=CPU, dtype=torch.float32,
                         max_new_tokens=max_new_tokens, prompt=prompt, decoder=decoder)


class Shared:
    """Captioners, pixels and ``generate`` outputs that several tests use, made once (generate is the
    slow part). Nothing here is mutated: tests that change a model's settings load their own."""

    def __init__(self, folder: Path, images: list[Image.Image]) -> None:
        self.folder, self.images = folder, images
        self._captioners: dict[str, BlipCaptioner] = {}
        self._pixels: dict[int, torch.Tensor] = {}
        self._expected: dict[tuple[str, int, int], torch.Tensor] = {}

    def captioner(self, prompt: str = "") -> BlipCaptioner:
        if prompt not in self._captioners:
            self._captioners[prompt] = make_captioner(self.folder, prompt=prompt)
        return self._captioners[prompt]

    def pixels(self, count: int) -> torch.Tensor:
        if count not in self._pixels:
            self._pixels[count] = self.captioner().preprocess(self.images[:count])
        return self._pixels[count]

    def ids(self, count: int, *, prompt: str = "", max_new_tokens: int = 16, decoder: str | None = None,
            ) -> torch.Tensor:
        """Token ids for the first ``count`` pictures; ``decoder=None`` means the reference, generate."""
        captioner = self.captioner(prompt)
        captioner.max_new_tokens = max_new_tokens
        if decoder is not None:
            return captioner.generate_ids(self.pixels(count), decoder=decoder)  # type: ignore[arg-type]
        key = (prompt, max_new_tokens, count)
        if key not in self._expected:
            self._expected[key] = captioner.generate_ids(self.pixels(count), decoder="generate")
        return self._expected[key]


@pytest.fixture(scope="module")
def shared(blip_dir: Path, images: list[Image.Image]) -> Shared:
    return Shared(blip_dir, images)


def generated_part(ids: torch.Tensor, prompt_len: int) -> list[list[int]]:
    return ids[:, prompt_len:].tolist()


def prompt_length(captioner: BlipCaptioner) -> int:
    return 1 if not captioner.prompt else len(captioner.processor.tokenizer(captioner.prompt)["input_ids"]) - 1


@pytest.mark.parametrize("prompt", ["", PROMPT])
@pytest.mark.parametrize("max_new_tokens", [3, 16])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_static_decoder_gives_generates_tokens(shared, batch, prompt, max_new_tokens):
    assert shared.captioner(prompt).decoder == "static"
    expected = shared.ids(batch, prompt=prompt, max_new_tokens=max_new_tokens)
    got = shared.ids(batch, prompt=prompt, max_new_tokens=max_new_tokens, decoder="static")
    assert got.dtype == expected.dtype and got.tolist() == expected.tolist()


@pytest.mark.parametrize("prompt", ["", PROMPT])
def test_the_equivalence_cases_really_stop_early_and_differ(shared, images, prompt):
    """What the parametrised test covers is not vacuous: captions differ per picture, some rows emit
    [SEP] and then pad while others go on, some batch stops before max_new_tokens, some row runs to it."""
    captioner = shared.captioner(prompt)
    length = prompt_length(captioner)
    ids = shared.ids(8, prompt=prompt)
    rows = generated_part(ids, length)
    assert len({tuple(row) for row in rows}) >= 3, rows
    ended = [row.index(SEP) for row in rows if SEP in row]
    assert any(end < len(row) - 1 and set(row[end + 1:]) == {PAD} for row, end in zip(
        (r for r in rows if SEP in r), ended, strict=True)), rows  # a row that finished keeps emitting pad
    assert any(SEP not in row for row in rows), rows  # ... while another runs to max_new_tokens
    assert ids.shape[1] == length + 16
    # A batch of only early finishers stops before max_new_tokens, as generate does.
    early = [index for index, row in enumerate(rows) if SEP in row][:3]
    assert early
    pixels = captioner.preprocess([images[index] for index in early])
    captioner.max_new_tokens = 16
    expected = captioner.generate_ids(pixels, decoder="generate")
    assert expected.shape[1] < length + 16
    assert captioner.generate_ids(pixels).tolist() == expected.tolist()


def test_captions_match_and_min_new_tokens_is_honoured(blip_dir, images):
    """The benchmarks force caption length through ``generation_config.min_new_tokens``."""
    captioner = make_captioner(blip_dir, max_new_tokens=10)
    pixels = captioner.preprocess(images)
    assert captioner.caption_pixels(pixels) == [
        " ".join(text.split()) for text in captioner.processor.batch_decode(
            captioner.generate_ids(pixels, decoder="generate"), skip_special_tokens=True)
    ]
    captioner.model.text_decoder.generation_config.min_new_tokens = 6
    expected = captioner.generate_ids(pixels, decoder="generate")
    assert captioner.generate_ids(pixels).tolist() == expected.tolist()
    assert all(SEP not in row[:6] for row in generated_part(expected, 1))
    assert any(SEP in row for row in generated_part(expected, 1))  # eos still happens after
    captioner.model.text_decoder.generation_config.min_new_tokens = None
    captioner.model.text_decoder.generation_config.min_length = 5  # counts bos: 4 new tokens at least
    expected = captioner.generate_ids(pixels, decoder="generate")
    assert captioner.generate_ids(pixels).tolist() == expected.tolist()
    assert all(SEP not in row[:4] for row in generated_part(expected, 1))


def test_eager_attention_model_matches_too(blip_dir, images):
    """Without the SDPA patch (transformers versions it does not fit) the decoder uses eager arithmetic."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model = BlipForConditionalGeneration.from_pretrained(str(blip_dir)).eval()
    pixels = BlipProcessor.from_pretrained(str(blip_dir))(images=images, return_tensors="pt")["pixel_values"]
    decoder = StaticBlipDecoder(model)
    assert not decoder.sdpa
    assert make_captioner(blip_dir)._static_decoder(graphs=False).sdpa  # the production default
    with torch.inference_mode():
        expected = model.generate(pixel_values=pixels, max_new_tokens=12, num_beams=1, do_sample=False)
        assert decoder.generate(pixels, max_new_tokens=12).tolist() == expected.tolist()
        capture = FakeCapture()
        capture.decoder = graphs = StaticBlipDecoder(model, graphs=True, capture=capture)
        assert graphs.generate(pixels[:5], max_new_tokens=12).tolist() == model.generate(
            pixel_values=pixels[:5], max_new_tokens=12, num_beams=1, do_sample=False).tolist()
        assert graphs.captures == 1


def test_graphs_on_cpu_fall_back_with_one_log_line(blip_dir, images, caplog):
    caplog.set_level(logging.INFO, logger="bot.models")
    captioner = make_captioner(blip_dir, decoder="graphs", prompt=PROMPT)
    assert captioner.decoder == "static"
    said = [r for r in caplog.records if "CUDA" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO, [r.getMessage() for r in caplog.records]
    pixels = captioner.preprocess(images[:5])
    assert captioner.generate_ids(pixels).tolist() == captioner.generate_ids(pixels, decoder="generate").tolist()
    # Asking that captioner for graphs directly still does not crash on the CPU.
    assert captioner.generate_ids(pixels, decoder="graphs").tolist() == captioner.generate_ids(
        pixels, decoder="generate").tolist()


def test_auto_and_the_setting():
    assert resolve_decoder("auto", CPU) == "generate"
    assert resolve_decoder("auto", torch.device("cuda")) == "graphs"
    assert resolve_decoder("graphs", torch.device("cuda")) == "graphs"
    assert resolve_decoder("static", CPU) == "static"
    assert CaptionerSettings().decoder == "generate"  # CPU behaviour unchanged by default
    assert CaptionerSettings(decoder="auto").decoder == "auto"


def test_a_bad_decoder_setting_names_the_key(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[models.captioner]\ndecoder = 'fast'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"models\.captioner\.decoder:"):
        load_settings(path, environ={})


def test_settings_it_cannot_reproduce_send_the_batch_to_generate(blip_dir, images, caplog):
    caplog.set_level(logging.INFO, logger="bot.models")
    captioner = make_captioner(blip_dir)
    config = captioner.model.text_decoder.generation_config  # the one BLIP's generate reads
    config.repetition_penalty = 1.5
    assert unsupported_generation_settings(config) == ["repetition_penalty=1.5"]
    assert unsupported_generation_settings(config, num_beams=3)[0] == "num_beams=3"
    pixels = captioner.preprocess(images[:3])
    for _ in range(2):
        assert captioner.generate_ids(pixels).tolist() == captioner.generate_ids(
            pixels, decoder="generate").tolist()
    assert len([r for r in caplog.records if "repetition_penalty" in r.getMessage()]) == 1


def test_bucket_sizes():
    assert [bucket_size(n) for n in (1, 2, 3, 4, 5, 7, 9, 13, 100, 300, 512)] == [
        1, 2, 3, 4, 6, 8, 12, 16, 128, 384, 512]


class FakeCapture:
    """What :func:`cuda_graph_capture` does, minus the GPU: warm up twice, then hand back the step
    itself as the "replay", wrapped to check that a replay moves no buffer (a graph's addresses are
    fixed at capture)."""

    def __init__(self) -> None:
        self.buckets: list[int] = []
        self.replays = 0

    def __call__(self, step: Callable[[], None], warmup: Callable[[], None], pool: Any) -> Callable[[], None]:
        warmup()
        warmup()
        decoder: StaticBlipDecoder = self.decoder
        assert decoder._workspace is not None
        workspace = decoder._workspace.buffers
        self.buckets.append(len(self.buckets))

        def replay() -> None:
            before = [(t.data_ptr(), t.shape, t.stride()) for t in workspace.tensors()]
            step()
            self.replays += 1
            assert [(t.data_ptr(), t.shape, t.stride()) for t in workspace.tensors()] == before

        return replay


def test_graph_driver_gives_generates_tokens_on_cpu(shared):
    """The graph path end to end with the capture replaced: buckets with padding rows, one shared
    workspace that grows, lazy captures, the all-finished check every 3 steps."""
    capture = FakeCapture()
    decoder = StaticBlipDecoder(shared.captioner().model, graphs=True, capture=capture, check_every=3)
    capture.decoder = decoder
    assert decoder.graphs
    expected_captures = 0
    for count, new_capture in ((3, True), (5, True), (3, True), (3, False), (6, False), (8, True), (1, True)):
        expected = shared.ids(count)
        replays = capture.replays
        with torch.inference_mode():
            got = decoder.generate(shared.pixels(count), max_new_tokens=16)
        assert got.tolist() == expected.tolist(), count
        expected_captures += new_capture
        assert decoder.captures == expected_captures, count
        assert capture.replays > replays  # the driver really replayed
        assert decoder._workspace is not None and decoder._workspace.capacity >= bucket_size(count)
    # 5 -> bucket 6 grew the workspace: bucket 3 was captured again on the new buffers; 8 -> bucket 8 grew it.
    assert sorted(decoder._workspace.graphs) == [1, 8]


def test_graph_driver_with_a_prompt_and_early_stop(shared):
    capture = FakeCapture()
    decoder = StaticBlipDecoder(shared.captioner(PROMPT).model, graphs=True, capture=capture, check_every=4)
    capture.decoder = decoder
    tokenizer = shared.captioner(PROMPT).processor.tokenizer
    for count in (8, 3):
        expected = shared.ids(count, prompt=PROMPT)
        prompt = tokenizer([PROMPT] * count, return_tensors="pt", return_token_type_ids=False)
        with torch.inference_mode():
            got = decoder.generate(shared.pixels(count), prompt["input_ids"], prompt["attention_mask"],
                                   max_new_tokens=16)
        assert got.tolist() == expected.tolist(), count


def test_a_failed_capture_turns_graphs_off_and_still_captions(shared, caplog):
    def broken(step: Callable[[], None], warmup: Callable[[], None], pool: Any) -> Callable[[], None]:
        raise RuntimeError("operation not permitted when stream is capturing")

    decoder = StaticBlipDecoder(shared.captioner().model, graphs=True, capture=broken)
    with caplog.at_level(logging.WARNING, logger="bot.models"), torch.inference_mode():
        for _ in range(2):
            assert decoder.generate(shared.pixels(3), max_new_tokens=16).tolist() == shared.ids(3).tolist()
    assert not decoder.graphs and decoder.captures == 0
    assert len([r for r in caplog.records if "capturing a CUDA graph failed" in r.getMessage()]) == 1


def test_a_batch_that_preempts_a_paused_one_gets_private_buffers(shared):
    """The queue pauses a background batch inside a layer pre-hook and runs an urgent batch on the same
    captioner. The paused batch holds the graph workspace, so the urgent one must not touch it."""
    # A captioner of its own: the hook below must not stay on a shared model if the test fails.
    captioner = make_captioner(shared.folder, max_new_tokens=16)
    capture = FakeCapture()
    decoder = StaticBlipDecoder(captioner.model, graphs=True, capture=capture)
    capture.decoder = decoder
    background, urgent = shared.pixels(8), shared.pixels(3)
    expected_background, expected_urgent = shared.ids(8), shared.ids(3)
    nested: list[torch.Tensor] = []
    checkpoints = 0

    def checkpoint(_module: torch.nn.Module, _args: Any) -> None:
        nonlocal checkpoints
        checkpoints += 1
        if checkpoints == 4 and not nested:  # inside the background batch's decoding (3 tokens in)
            nested.append(decoder.generate(urgent, max_new_tokens=16))

    handle = decoder.layers[0].register_forward_pre_hook(checkpoint)
    try:
        with torch.inference_mode():
            got = decoder.generate(background, max_new_tokens=16)
    finally:
        handle.remove()
    assert nested and nested[0].tolist() == expected_urgent.tolist()
    assert got.tolist() == expected_background.tolist()
    # Preemption checkpoints still fire: once per replayed token (background), per layer (urgent, eager).
    assert checkpoints >= got.shape[1] - 1 + expected_urgent.shape[1] - 1


def test_static_loop_keeps_the_queue_checkpoints_per_layer(blip_dir, images):
    """Inside generate every text layer call is a preemption checkpoint; the static loop keeps them."""
    counts = {}
    for decoder in ("generate", "static"):
        captioner = make_captioner(blip_dir, decoder=decoder, max_new_tokens=5)
        captioner.model.text_decoder.generation_config.min_new_tokens = 5
        calls: list[torch.nn.Module] = []

        def checkpoint(module: torch.nn.Module, _args: Any, calls: list[torch.nn.Module] = calls) -> None:
            calls.append(module)

        handles = [layer.register_forward_pre_hook(checkpoint)
                   for layer in captioner.model.text_decoder.bert.encoder.layer]
        try:
            captioner.caption(images[:2])
        finally:
            for handle in handles:
                handle.remove()
        counts[decoder] = len(calls)
    assert counts["static"] == counts["generate"] == 5 * 2  # 5 tokens x 2 layers


def test_analyzer_passes_the_setting(tiny_settings, monkeypatch):
    import bot.pipeline

    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_captioner(*args: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(bot.pipeline, "BlipCaptioner", fake_captioner)
    captioner = tiny_settings.models.captioner.model_copy(update={"decoder": "static"})
    models = tiny_settings.models.model_copy(update={"captioner": captioner})
    with pytest.raises(Stop):
        bot.pipeline.Analyzer.from_settings(tiny_settings.model_copy(update={"models": models}))
    assert seen["decoder"] == "static"
