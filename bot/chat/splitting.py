"""Split long answers at Discord's 2,000-character message limit, at natural boundaries."""

from __future__ import annotations

DISCORD_LIMIT = 2000


def split_message(text: str, limit: int = DISCORD_LIMIT) -> list[str]:
    """Chunks of at most ``limit`` characters, broken at a paragraph, line, sentence or word end.

    Open code fences are closed at the end of a chunk and reopened in the next, so a long code
    block still renders as code in every message.
    """
    text = text.strip()
    if not text:
        return []
    chunks: list[str] = []
    reopen = ""
    while text:
        budget = limit - len(reopen)
        if len(text) <= budget:
            chunks.append(reopen + text)
            break
        window = text[:budget - 4]  # room to close a code fence
        cut = max(window.rfind("\n\n"), window.rfind("\n"))
        if cut < budget // 2:
            cut = max(window.rfind(". "), window.rfind("! "), window.rfind("? "))
            cut = cut + 1 if cut >= budget // 2 else window.rfind(" ")
        if cut < budget // 4:
            cut = len(window)  # one enormous word: hard cut
        piece, rest = reopen + window[:cut].rstrip(), text[cut:]
        # Drop the break itself, but keep a code line's indentation.
        text = rest.lstrip("\n") if rest.startswith("\n") else rest.lstrip(" ")
        fence_open = piece.count("```") % 2 == 1
        if fence_open:
            piece += "\n```"
            reopen = "```\n"
        else:
            reopen = ""
        chunks.append(piece)
    return chunks
