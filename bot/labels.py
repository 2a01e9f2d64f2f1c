"""Label sets for CLIP zero-shot tagging, read from plain-text files in ``labels/``.

File format (one set per file, the file name is the set name)::

    # any comment
    # template: a photo of a {}.
    # top_k: 3
    dog
    penguin | a photo of a penguin standing on ice

One label per line; ``label | prompt`` gives a label its own prompt instead of the template.
Header lines ``# template:`` and ``# top_k:`` are optional.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TEMPLATE = "a photo of {}."
# Sets every tagger needs: the rest of the bot reads them by name.
REQUIRED_SETS = ("objects", "scenes", "medium", "mood", "topics")


class LabelSetError(ValueError):
    """A label file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[str, ...]
    prompts: tuple[str, ...]
    top_k: int

    @property
    def fingerprint(self) -> str:
        """Changes whenever labels or prompts change, so cached text embeddings are invalidated."""
        text = "\n".join(f"{label}\t{prompt}" for label, prompt in zip(self.labels, self.prompts, strict=True))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LabelLine:
    """One meaningful line of a label file: a ``# key: value`` header or a content line."""

    number: int
    text: str  # the stripped content line; "" for a header
    key: str | None = None  # lower-cased header key ("template", "top_k", ...); None for content
    value: str = ""  # the header's stripped value


def label_file_lines(text: str) -> Iterator[LabelLine]:
    """Headers and content lines of a label file (shared by the tagging sets and the /vibe profile);
    blank lines are skipped, and a comment without a value yields an empty-valued header callers ignore."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, _, value = line.lstrip("#").strip().partition(":")
            yield LabelLine(number, "", key.strip().lower(), value.strip())
        else:
            yield LabelLine(number, line)


def parse_label_file(path: Path, default_top_k: int = 3) -> LabelSet:
    template = DEFAULT_TEMPLATE
    top_k = default_top_k
    labels: list[str] = []
    prompts: list[str] = []
    for entry in label_file_lines(path.read_text(encoding="utf-8")):
        number, line = entry.number, entry.text
        if entry.key is not None:
            if entry.key == "template" and entry.value:
                template = entry.value
                if "{}" not in template:
                    raise LabelSetError(f"{path}:{number}: template must contain '{{}}'")
            elif entry.key == "top_k" and entry.value:
                try:
                    top_k = int(entry.value)
                except ValueError:
                    raise LabelSetError(f"{path}:{number}: top_k must be a whole number") from None
            continue
        label, _, prompt = line.partition("|")
        label = label.strip()
        if not label:
            raise LabelSetError(f"{path}:{number}: empty label before '|'")
        if label in labels:
            raise LabelSetError(f"{path}:{number}: duplicate label {label!r}")
        labels.append(label)
        prompts.append(prompt.strip() or template.replace("{}", label))
    if not labels:
        raise LabelSetError(f"{path}: no labels")
    return LabelSet(path.stem, tuple(labels), tuple(prompts), max(1, min(top_k, len(labels))))


def load_label_sets(directory: Path, default_top_k: int = 3) -> dict[str, LabelSet]:
    """Every ``*.txt`` in ``directory``, by name; the required sets must be present."""
    if not directory.is_dir():
        raise LabelSetError(f"labels folder not found: {directory}")
    sets = {path.stem: parse_label_file(path, default_top_k) for path in sorted(directory.glob("*.txt"))}
    missing = [name for name in REQUIRED_SETS if name not in sets]
    if missing:
        raise LabelSetError(f"{directory}: missing label sets: {', '.join(missing)}")
    return sets
