"""Pictures with text in them, rendered at test time (nothing binary is committed).

Pillow's built-in scalable font (``ImageFont.load_default(size=...)``, Pillow >= 10.1) is used, so
the pictures look the same on every machine, fonts installed or not.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont


def screenshot(lines: list[str], *, size: tuple[int, int] = (900, 320), font_px: int = 30,
               background: str = "white", ink: str = "black", fmt: str = "PNG") -> bytes:
    """A plain screenshot-like picture: ``lines`` of dark text on a light background."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_px)
    y = 30
    for line in lines:
        draw.text((30, y), line, fill=ink, font=font)
        y += int(font_px * 1.8)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()
