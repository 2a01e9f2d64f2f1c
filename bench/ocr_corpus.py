"""A seeded, generated OCR corpus: text images with their ground-truth lines, and photos without text.

Nothing is downloaded and nothing binary is committed: every image is drawn in memory at run time
from the DejaVu fonts on disk and the real photos that ship inside scikit-image (``skimage.data``)
and scikit-learn (``load_sample_images``), so the corpus is the same on every machine that has the
same fonts and library versions, and a smaller ``per_category`` gives a prefix of the full corpus
(each sample draws from its own ``random.Random`` seeded by category and index).

Categories (what people post in a Discord channel that has words in it):

- ``plain``: rendered lines, several fonts, 12-64 px, on flat light, dark and coloured backgrounds;
  ``font_px`` lets the report split small (< 20 px) from normal text;
- ``photo``: a caption placed on a real photo (the calmest of a few candidate spots, as a person
  would), with a semi-transparent backing box or without one; saved as JPEG like a real upload;
- ``rotated``: like ``plain`` (and a few boxed captions on photos) turned by 2-8 degrees either way;
- ``screenshot``: chat bubbles, a terminal with an error, a settings panel, a receipt on a table, a
  whole desktop window (1600x900 to 2560x1440, 13-16 px text) and a phone chat (1080 x 2340);
- ``meme``: white Impact-like condensed bold capitals with a black outline, top and bottom of a photo;
- ``notext``: the photos alone, plus flips, crops, a rotation and a downscale of each, mostly at the
  sizes photos are posted at (1280-1920 px), for the text detector's precision and the cost of a
  photo. Photos that really contain words or numerals are left out of
  this set and of the backgrounds: the astronaut (name tag, mission patch), the coins (inscriptions),
  the motorcycle (the maker's name on the tank, which the reader does read once the photo is
  upscaled), the cameraman (his lens's distance scale reads as "0000"), ``page``, ``text`` and the
  scikit-image logo.

Every image is handed over as the text reader receives it in the bot: grayscale (``"L"``), longest
side at most 1920 px (:func:`bot.imaging.decode_image`'s ``text_size`` copy).
"""

from __future__ import annotations

import functools
import io
import random
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

MAX_SIDE = 1920
CATEGORIES = ("plain", "photo", "rotated", "screenshot", "meme")
#: Images per text category in the full corpus (5 x 64 = 320 text images) and photos without text.
DEFAULT_PER_CATEGORY = 64
DEFAULT_NOTEXT = 104  # 13 photos x 8 variants
SIZES = (12, 13, 14, 16, 18, 20, 22, 24, 28, 32, 40, 48, 56, 64)

RGB = tuple[int, int, int]

# ----------------------------------------------------------------------------- words

_WORDS = """
the and for you that this with have are not but all can was your what when out just like time
about from they will would there their more some get one make know good people see into year
back after work first well way even new want because any these give day most us very over think
also our two how great little world still long last find here thing tell help water place life
home house room table chair window door phone screen message friend family city street road car
train plane boat bike dog cat bird fish tree flower garden park river lake mountain beach sun
rain snow cloud wind night morning evening today tomorrow yesterday week month summer winter
coffee tea bread cheese pizza pasta apple orange lemon sugar milk butter salt pepper dinner lunch
breakfast party music song movie game book page story picture photo video camera light color
blue green red yellow black white brown small big open close start stop read write send call
play watch listen walk run drive cook clean build fix check update save delete upload download
server client network error warning file folder system user admin password login account email
settings profile privacy sound display battery storage version release build test deploy branch
merge commit issue ticket meeting office team project plan budget price total order payment
receipt invoice store market shop card cash change thanks please sorry hello welcome goodbye
happy funny weird quiet loud fast slow early late ready busy free full empty warm cold fresh
really maybe always never sometimes often only almost enough together again around between
under above behind before during without against through everyone nothing something anything
""".split()
_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
          "nina", "oscar", "peggy", "quinn", "rupert", "sybil", "trent", "uma", "victor", "wendy")
_HOSTS = ("db.internal", "api.example.com", "localhost", "cache-01", "build-server", "10.0.3.7", "redis")
_END_PUNCT = ("", "", "", ".", ".", "!", "?", ":", "...")


def _number(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return str(rng.randint(0, 9999))
    if kind == 1:
        return f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d}"
    if kind == 2:
        return f"{rng.randint(0, 99)}.{rng.randint(0, 99):02d}"
    if kind == 3:
        return f"#{rng.randint(1, 999)}"
    if kind == 4:
        return f"{rng.randint(1, 100)}%"
    if kind == 5:
        return f"${rng.randint(1, 250)}.{rng.randint(0, 99):02d}"
    if kind == 6:
        return f"{rng.randint(1, 28)}/{rng.randint(1, 12)}/{rng.randint(2019, 2026)}"
    return f"v{rng.randint(1, 9)}.{rng.randint(0, 20)}"


def sentence(rng: random.Random, low: int = 2, high: int = 7) -> str:
    """A line of plain English words with some digits and punctuation (no meaning needed, real words)."""
    words = [rng.choice(_WORDS) for _ in range(rng.randint(low, high))]
    if rng.random() < 0.25:
        words.insert(rng.randrange(len(words) + 1), _number(rng))
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    if len(words) > 3 and rng.random() < 0.2:
        index = rng.randrange(1, len(words) - 1)
        words[index] += ","
    if rng.random() < 0.06:
        index = rng.randrange(len(words))
        words[index] = f"({words[index]})"
    if rng.random() < 0.06:
        index = rng.randrange(len(words))
        words[index] = f'"{words[index]}"'
    return " ".join(words) + rng.choice(_END_PUNCT)


def normalise(text: str) -> str:
    """Whitespace runs (newlines between lines included) as one space, ends stripped."""
    return " ".join(text.split())


# ----------------------------------------------------------------------------- fonts

_FONT_FILES = {
    "sans": "DejaVuSans.ttf", "sans-bold": "DejaVuSans-Bold.ttf", "sans-oblique": "DejaVuSans-Oblique.ttf",
    "sans-condensed": "DejaVuSansCondensed.ttf", "sans-light": "DejaVuSans-ExtraLight.ttf",
    "serif": "DejaVuSerif.ttf", "serif-bold": "DejaVuSerif-Bold.ttf", "serif-italic": "DejaVuSerif-Italic.ttf",
    "mono": "DejaVuSansMono.ttf", "mono-bold": "DejaVuSansMono-Bold.ttf",
    "impact-like": "DejaVuSansCondensed-Bold.ttf",
}
PLAIN_FONTS = ("sans", "serif", "mono", "sans-bold", "serif-bold", "sans-condensed", "sans-oblique",
               "serif-italic", "sans-light", "mono-bold")


@functools.cache
def _font_dirs() -> tuple[Path, ...]:
    """Where the DejaVu files are: the Debian path, else wherever fontconfig knows them."""
    found = [Path("/usr/share/fonts/truetype/dejavu")]
    try:
        listed = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True, timeout=10).stdout
        found.extend(Path(line.split(":")[0]).parent for line in listed.splitlines() if "DejaVu" in line)
    except (OSError, subprocess.SubprocessError):
        pass
    return tuple(dict.fromkeys(d for d in found if d.is_dir()))


def fonts_available() -> bool:
    """Whether the DejaVu faces are on disk (without them every face falls back to Pillow's one)."""
    return _font_path("sans") is not None


def _font_path(family: str) -> Path | None:
    for directory in _font_dirs():
        path = directory / _FONT_FILES[family]
        if path.is_file():
            return path
    return None


@functools.cache
def font(family: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The face at ``size`` px (em size); Pillow's built-in scalable face when DejaVu is missing."""
    path = _font_path(family)
    if path is None:
        return ImageFont.load_default(size)
    return ImageFont.truetype(str(path), size)


def _text_size(draw: ImageDraw.ImageDraw, text: str, face: ImageFont.ImageFont, stroke: int = 0) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=face, stroke_width=stroke)
    return right - left, bottom - top


_MEASURE = ImageDraw.Draw(Image.new("L", (1, 1)))


def text_width(text: str, face: ImageFont.ImageFont, stroke: int = 0) -> int:
    return _text_size(_MEASURE, text, face, stroke)[0]


# ----------------------------------------------------------------------------- photos


@dataclass(frozen=True)
class Photo:
    name: str
    image: Image.Image  # RGB


#: Real photos without words in them (see the module docstring for the ones left out and why).
NOTEXT_PHOTOS = ("chelsea", "clock", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "moon",
                 "retina", "brick", "grass", "gravel", "china", "flower")
#: Backgrounds for captions and memes: the same photos without words (a caption on the astronaut would
#: be read together with her name tag and patch, which are not in the ground truth).
CAPTION_PHOTOS = ("chelsea", "coffee", "rocket", "china", "flower",
                  "hubble_deep_field", "immunohistochemistry", "moon", "retina")


@functools.cache
def photos() -> dict[str, Photo]:
    """The real photos by name, RGB (scikit-image's bundled ones need no download)."""
    from skimage import data

    arrays: dict[str, np.ndarray] = {}
    for name in ("chelsea", "clock", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "moon",
                 "retina", "brick", "grass", "gravel"):
        arrays[name] = getattr(data, name)()
    try:
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        for filename, array in zip(sample.filenames, sample.images, strict=True):
            arrays[Path(filename).stem] = array
    except ImportError:  # pragma: no cover - scikit-learn is a test dependency
        pass
    return {name: Photo(name, Image.fromarray(np.asarray(array)).convert("RGB")) for name, array in arrays.items()}


def _available(names: tuple[str, ...]) -> list[str]:
    have = photos()
    return [name for name in names if name in have]


# ----------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    """One corpus image: what the reader gets (``image``) and what it should read (``lines``)."""

    name: str
    category: str
    variant: str  # the sub-kind within the category: font, background, layout, box/no box, ...
    font_px: int  # the main text's size in px (em size); 0 for no text
    image: Image.Image  # mode "L", longest side <= MAX_SIDE
    lines: tuple[str, ...]  # ground truth, in reading order (top to bottom, left to right)

    @property
    def text(self) -> str:
        return normalise(" ".join(self.lines))


def _finish(image: Image.Image, *, jpeg_quality: int = 0) -> Image.Image:
    """The reader's copy: optional JPEG round trip (uploads of photos are JPEG), gray, <= MAX_SIDE."""
    if jpeg_quality:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=jpeg_quality)
        image = Image.open(io.BytesIO(buffer.getvalue()))
    gray = image.convert("L")
    if max(gray.size) > MAX_SIDE:
        gray = ImageOps.contain(gray, (MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    gray.load()
    return gray


def _luma(color: RGB) -> float:
    """Pillow's RGB -> L weights (ITU-R 601-2): what the reader sees of a colour."""
    r, g, b = color
    return 0.299 * r + 0.587 * g + 0.114 * b


def _contrasting_pair(rng: random.Random) -> tuple[RGB, RGB, str]:
    """(background, text colour, kind): light, dark and coloured themes, >= 90 grey levels apart."""
    kind = rng.choice(("white", "white", "light", "dark", "colour"))
    while True:
        if kind == "white":
            bg: RGB = (255, 255, 255)
            fg: RGB = tuple(rng.randint(0, 60) for _ in range(3))  # type: ignore[assignment]
        elif kind == "light":
            bg = tuple(rng.randint(215, 250) for _ in range(3))  # type: ignore[assignment]
            fg = tuple(rng.randint(0, 90) for _ in range(3))  # type: ignore[assignment]
        elif kind == "dark":
            bg = tuple(rng.randint(10, 50) for _ in range(3))  # type: ignore[assignment]
            fg = tuple(rng.randint(190, 255) for _ in range(3))  # type: ignore[assignment]
        else:
            bg = tuple(rng.randint(0, 255) for _ in range(3))  # type: ignore[assignment]
            fg = tuple(rng.randint(0, 255) for _ in range(3))  # type: ignore[assignment]
        if abs(_luma(bg) - _luma(fg)) >= 90:
            return bg, fg, kind


def _draw_lines(draw: ImageDraw.ImageDraw, xy: tuple[int, int], lines: list[str], face: ImageFont.ImageFont,
                fill: RGB | tuple[int, int, int, int], spacing: float, *, stroke: int = 0,
                stroke_fill: RGB | None = None, align_width: int = 0) -> None:
    """Lines from ``xy`` down, ``spacing`` x font size apart; centred in ``align_width`` when given."""
    x0, y = xy
    size = getattr(face, "size", 12)
    for line in lines:
        x = x0
        if align_width:
            x = x0 + (align_width - text_width(line, face, stroke)) // 2
        draw.text((x, y), line, font=face, fill=fill, stroke_width=stroke, stroke_fill=stroke_fill)
        y += round(size * spacing)


def _block_size(lines: list[str], face: ImageFont.ImageFont, spacing: float, stroke: int = 0) -> tuple[int, int]:
    size = getattr(face, "size", 12)
    width = max(text_width(line, face, stroke) for line in lines)
    height = round(size * spacing) * (len(lines) - 1) + round(size * 1.25) + 2 * stroke
    return width, height


def _plain(rng: random.Random, index: int) -> Sample:
    size = SIZES[index % len(SIZES)]
    family = PLAIN_FONTS[(index // len(SIZES) + index) % len(PLAIN_FONTS)]
    face = font(family, size)
    bg, fg, kind = _contrasting_pair(rng)
    # Long lines for small text (documents, captions), short ones for headings.
    high = 9 if size < 24 else 6 if size < 40 else 4
    lines = [sentence(rng, 2, high) for _ in range(rng.randint(1, 4 if size < 40 else 2))]
    spacing = rng.uniform(1.35, 1.8)
    width, height = _block_size(lines, face, spacing)
    if rng.random() < 0.35:  # a block somewhere on a screen-sized canvas
        canvas = (max(width + 40, rng.choice((800, 1024, 1280))), max(height + 40, rng.choice((480, 600, 720))))
    else:  # cropped tight with a margin, like a snipped paragraph
        margin = rng.randint(max(6, size // 2), max(12, size * 2))
        canvas = (width + 2 * margin, height + 2 * margin)
    image = Image.new("RGB", canvas, bg)
    x = rng.randint(min(20, (canvas[0] - width) // 2), max(20, canvas[0] - width - 20)) if canvas[0] > width + 40 \
        else (canvas[0] - width) // 2
    y = rng.randint(min(20, (canvas[1] - height) // 2), max(20, canvas[1] - height - 20)) if canvas[1] > height + 40 \
        else (canvas[1] - height) // 2
    _draw_lines(ImageDraw.Draw(image), (x, y), lines, face, fg, spacing)
    return Sample(f"plain-{index:03d}", "plain", f"{family}/{kind}", size, _finish(image), tuple(lines))


def _photo_canvas(rng: random.Random, names: list[str], low: int, high: int) -> tuple[str, Image.Image]:
    name = rng.choice(names)
    base = photos()[name].image
    if rng.random() < 0.5:
        base = ImageOps.mirror(base)
    longest = rng.randint(low, high)
    scale = longest / max(base.size)
    return name, base.resize((round(base.width * scale), round(base.height * scale)), Image.Resampling.BICUBIC)


def _calm_spot(image: Image.Image, rng: random.Random, size: tuple[int, int], tries: int = 8) -> tuple[int, int]:
    """Where a person would put a caption: of a few random spots, the one with the least texture."""
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    width, height = size
    best: tuple[float, tuple[int, int]] | None = None
    for _ in range(tries):
        x = rng.randint(0, max(0, image.width - width))
        y = rng.randint(0, max(0, image.height - height))
        texture = float(gray[y:y + height, x:x + width].std())
        if best is None or texture < best[0]:
            best = (texture, (x, y))
    assert best is not None
    return best[1]


def _text_layer(lines: list[str], face: ImageFont.ImageFont, spacing: float, fill: tuple[int, int, int, int],
                box: tuple[int, int, int, int] | None, pad: int, stroke: int = 0,
                stroke_fill: RGB | None = None) -> Image.Image:
    """The lines on a transparent RGBA layer, on a (semi-transparent) box when ``box`` is a colour."""
    width, height = _block_size(lines, face, spacing, stroke)
    layer = Image.new("RGBA", (width + 2 * pad, height + 2 * pad), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if box is not None:
        draw.rounded_rectangle((0, 0, layer.width - 1, layer.height - 1), radius=pad // 2, fill=box)
    _draw_lines(draw, (pad, pad), lines, face, fill, spacing, stroke=stroke, stroke_fill=stroke_fill)
    return layer


def _caption_on_photo(rng: random.Random, *, boxed: bool, size: int, angle: float = 0.0
                      ) -> tuple[str, Image.Image, list[str], str]:
    name, canvas = _photo_canvas(rng, _available(CAPTION_PHOTOS), 800, 1400)
    family = rng.choice(("sans", "sans-bold", "serif", "sans-condensed", "serif-bold"))
    face = font(family, size)
    max_width = int(canvas.width * 0.85)
    lines: list[str] = []
    for _ in range(rng.randint(1, 2)):
        line = sentence(rng, 2, 6)
        while text_width(line, face) > max_width and " " in line:
            line = line.rsplit(" ", 1)[0]
        lines.append(line)
    spacing = rng.uniform(1.3, 1.6)
    pad = max(6, size // 2)
    width, height = _block_size(lines, face, spacing)
    x, y = _calm_spot(canvas, rng, (width + 2 * pad, height + 2 * pad))
    if boxed:
        dark = rng.random() < 0.6
        box = (0, 0, 0, rng.randint(140, 210)) if dark else (255, 255, 255, rng.randint(160, 220))
        fill = (255, 255, 255, 255) if dark else (0, 0, 0, 255)
    else:
        region = np.asarray(canvas.convert("L"))[y:y + height + 2 * pad, x:x + width + 2 * pad]
        box = None
        fill = (0, 0, 0, 255) if float(region.mean()) > 128 else (255, 255, 255, 255)
    layer = _text_layer(lines, face, spacing, fill, box, pad)
    if angle:
        layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
        x, y = min(x, canvas.width - layer.width), min(y, canvas.height - layer.height)
    canvas = canvas.convert("RGBA")
    canvas.alpha_composite(layer, (max(0, x), max(0, y)))
    return name, canvas.convert("RGB"), lines, family


def _photo(rng: random.Random, index: int) -> Sample:
    boxed = index % 2 == 0
    size = rng.choice((20, 24, 28, 32, 36, 40, 48, 56))
    name, image, lines, family = _caption_on_photo(rng, boxed=boxed, size=size)
    variant = f"{'box' if boxed else 'no box'}/{name}/{family}"
    return Sample(f"photo-{index:03d}", "photo", variant, size,
                  _finish(image, jpeg_quality=rng.randint(80, 92)), tuple(lines))


def _rotated(rng: random.Random, index: int) -> Sample:
    angle = rng.uniform(2.0, 8.0) * (1 if index % 2 else -1)
    size = rng.choice((18, 20, 24, 28, 32, 40))
    if index % 4 == 3:  # a boxed caption on a photo, turned
        name, image, lines, family = _caption_on_photo(rng, boxed=True, size=size, angle=angle)
        return Sample(f"rotated-{index:03d}", "rotated", f"photo/{name}/{angle:+.1f}°", size,
                      _finish(image, jpeg_quality=88), tuple(lines))
    family = rng.choice(("sans", "serif", "mono", "sans-bold"))
    face = font(family, size)
    bg, fg, _ = _contrasting_pair(rng)
    lines = [sentence(rng, 2, 7) for _ in range(rng.randint(1, 4))]
    spacing = rng.uniform(1.4, 1.8)
    layer = _text_layer(lines, face, spacing, (*fg, 255), None, pad=size)
    layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    margin = rng.randint(10, 80)
    image = Image.new("RGBA", (layer.width + 2 * margin, layer.height + 2 * margin), (*bg, 255))
    image.alpha_composite(layer, (margin, margin))
    return Sample(f"rotated-{index:03d}", "rotated", f"plain/{family}/{angle:+.1f}°", size,
                  _finish(image), tuple(lines))


# ----------------------------------------------------------------------------- screenshots


def _wrap(text: str, face: ImageFont.ImageFont, width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(f"{lines[-1]} {word}", face) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _chat(rng: random.Random, scale: float = 1.0) -> tuple[Image.Image, list[str], int]:
    """Chat bubbles; ``scale`` > 1 draws them at a phone's pixel density (with its status bar)."""
    dark = rng.random() < 0.5
    bg: RGB = (49, 51, 56) if dark else (255, 255, 255)
    mine: RGB = (88, 101, 242)
    theirs: RGB = (64, 66, 73) if dark else (233, 233, 238)
    text_theirs: RGB = (235, 235, 240) if dark else (20, 20, 25)
    name_color: RGB = (160, 165, 175) if dark else (110, 110, 120)
    size = round(rng.choice((15, 16, 18, 20)) * scale)
    face, small = font("sans", size), font("sans", max(12, round(size - 3 * scale)))
    width = rng.choice((640, 720, 800)) if scale == 1 else 1080
    pad, gap, radius = round(10 * scale), round(14 * scale), round(14 * scale)
    me = rng.choice(_NAMES)
    other = rng.choice([n for n in _NAMES if n != me])
    bubbles = []
    for turn in range(rng.randint(3, 6)):
        ours = turn % 2 == 1 if rng.random() < 0.8 else rng.random() < 0.5
        bubbles.append((ours, _wrap(sentence(rng, 3, 12), face, int(width * 0.6))))
    line_h = round(size * 1.35)
    top = round(20 * scale) + (round(60 * scale) if scale > 1 else 0)
    height = top + round(20 * scale) + sum(len(lines) * line_h + 2 * pad + (0 if ours else small.size + pad) + gap
                                           for ours, lines in bubbles)
    if scale > 1:  # a phone screen: 1080 x 2340 at least
        height = max(height, 2340)
    image = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(image)
    truth: list[str] = []
    margin = round(20 * scale)
    if scale > 1:  # the status bar: time left, battery right
        clock, battery = f"{rng.randint(7, 23)}:{rng.randint(0, 59):02d}", f"{rng.randint(5, 100)}%"
        draw.text((margin * 2, margin), clock, font=small, fill=ink_for(bg))
        draw.text((width - margin * 2 - text_width(battery, small), margin), battery, font=small, fill=ink_for(bg))
        truth.extend((clock, battery))
    y = top
    for ours, lines in bubbles:
        block_w = max(text_width(line, face) for line in lines) + 2 * radius
        block_h = len(lines) * line_h + 2 * pad
        if not ours:
            draw.text((margin, y), other, font=small, fill=name_color)
            truth.append(other)
            y += small.size + pad
        x = width - margin - block_w if ours else margin
        draw.rounded_rectangle((x, y, x + block_w, y + block_h), radius=radius, fill=mine if ours else theirs)
        _draw_lines(draw, (x + radius, y + pad), lines, face, (255, 255, 255) if ours else text_theirs, 1.35)
        truth.extend(lines)
        y += block_h + gap
    return image, truth, size


def ink_for(background: RGB) -> RGB:
    """Near-black on light backgrounds, near-white on dark ones."""
    return (20, 20, 24) if _luma(background) > 128 else (235, 235, 240)


def _phone(rng: random.Random) -> tuple[Image.Image, list[str], int]:
    """A phone chat screenshot (1080 px wide, ~2.75 px per point): fitted to 1920 px tall on the way in."""
    image, truth, size = _chat(rng, scale=2.75)
    shrink = min(1.0, MAX_SIDE / max(image.size))
    return image, truth, round(size * shrink)


def _desktop(rng: random.Random) -> tuple[Image.Image, list[str], int]:
    """A whole desktop window at 1600x900, 1920x1080 or 2560x1440 with 13-16 px UI text.

    The reader gets it fitted to 1920 px, so a 1440p screenshot's 14 px text arrives at 10.5 px:
    the case that sets how small the gate may shrink a picture. A sidebar and the main pane share
    one row grid, so reading order is row by row, left to right, as a line detector returns it.
    """
    screen = rng.choice(((1600, 900), (1920, 1080), (1920, 1080), (2560, 1440)))
    size = rng.choice((13, 14, 15, 16))
    dark = rng.random() < 0.5
    bg: RGB = (30, 31, 34) if dark else (250, 250, 250)
    side_bg: RGB = (43, 45, 49) if dark else (236, 236, 240)
    ink = ink_for(bg)
    mono = rng.random() < 0.5
    face = font("mono" if mono else "sans", size)
    image = Image.new("RGB", screen, bg)
    draw = ImageDraw.Draw(image)
    bar_h = size * 2 + 8
    title = f"{rng.choice(_WORDS)}.{rng.choice(('py', 'md', 'txt', 'log'))} - {rng.choice(_WORDS)} - " \
            f"{rng.choice(('Editor', 'Notes', 'Terminal', 'Browser'))}"
    title_face = font("sans", size)
    draw.rectangle((0, 0, screen[0], bar_h), fill=side_bg)
    draw.text(((screen[0] - text_width(title, title_face)) // 2, (bar_h - size) // 2), title, font=title_face, fill=ink)
    truth = [title]
    side_w = rng.choice((220, 260, 300))
    draw.rectangle((0, bar_h, side_w, screen[1]), fill=side_bg)
    line_h = round(size * 1.7)
    rows = rng.randint(12, 22)
    sidebar = rng.randint(4, 9)
    y = bar_h + 16
    for row in range(rows):
        if row < sidebar:
            item = f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)}.{rng.choice(('py', 'md', 'txt'))}"
            draw.text((16, y), item, font=face, fill=ink)
            truth.append(item)
        if rng.random() < 0.85:
            line = sentence(rng, 3, 12)
            if row == rows // 2:
                line = f"Error: connection refused ({rng.choice(_HOSTS)}:{rng.choice((5432, 6379, 8080))})"
            draw.text((side_w + 24, y), line, font=face, fill=(220, 70, 60) if line.startswith("Error") else ink)
            truth.append(line)
        y += line_h
    status = f"Ln {rng.randint(1, 400)}, Col {rng.randint(1, 80)}"
    draw.rectangle((0, screen[1] - bar_h, screen[0], screen[1]), fill=side_bg)
    draw.text((screen[0] - 24 - text_width(status, title_face), screen[1] - bar_h + (bar_h - size) // 2), status,
              font=title_face, fill=ink)
    truth.append(status)
    shrink = min(1.0, MAX_SIDE / max(screen))
    return image, truth, round(size * shrink)


def _terminal(rng: random.Random) -> tuple[Image.Image, list[str], int]:
    size = rng.choice((14, 15, 16, 18))
    face = font("mono", size)
    host, port = rng.choice(_HOSTS), rng.choice((5432, 6379, 8080, 443, 3306, 27017))
    word = rng.choice(_WORDS)
    user = rng.choice(_NAMES)
    body = [
        f"$ python {word}.py --host {host}",
        "Traceback (most recent call last):",
        f'File "{word}.py", line {rng.randint(10, 400)}, in <module>',
        f"client.connect(port={port})",
        "ConnectionRefusedError: [Errno 111] Connection refused",
        f"Error: connection refused ({host}:{port})",
        f"$ curl -s http://{host}:{port}/health",
        f"curl: (7) Failed to connect to {host} port {port}: Connection refused",
        f"$ systemctl status {word}",
        f"{word}.service - {rng.choice(_WORDS)} {rng.choice(_WORDS)} daemon",
        "Active: failed (Result: exit-code)",
        "$ echo $?",
        str(rng.choice((1, 2, 7, 127))),
    ]
    start = rng.randrange(0, 3)
    body = body[start:start + rng.randint(5, 11)]
    title = f"{user}@{rng.choice(_WORDS)}: ~/{rng.choice(_WORDS)}"
    line_h = round(size * 1.45)
    width = max(text_width(line, face) for line in body) + 60
    width = max(width, rng.choice((720, 880, 960)))
    height = 36 + 20 + line_h * len(body) + 20
    background: RGB = rng.choice(((12, 12, 12), (30, 30, 30), (0, 43, 54)))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width, 36), fill=(60, 60, 64))
    for i, dot in enumerate(((255, 95, 86), (255, 189, 46), (39, 201, 63))):
        draw.ellipse((12 + 20 * i, 12, 24 + 20 * i, 24), fill=dot)
    title_face = font("sans", 14)
    draw.text(((width - text_width(title, title_face)) // 2, 10), title, font=title_face, fill=(220, 220, 220))
    y = 36 + 20
    for line in body:
        red = line.startswith(("Error", "ConnectionRefusedError", "curl:", "Active: failed"))
        draw.text((20 + (4 * size // 2 if line.startswith(("File", "client")) else 0), y), line, font=face,
                  fill=(255, 110, 100) if red else (225, 225, 225))
        y += line_h
    return image, [title, *body], size


_SETTINGS = (("Notifications", ("On", "Off", "Mentions only")), ("Sound", ("On", "Off")),
             ("Theme", ("Dark", "Light", "System")), ("Language", ("English", "English (UK)")),
             ("Font size", ("Small", "Medium", "Large")), ("Auto update", ("Daily", "Weekly", "Never")),
             ("Backup", ("Every night", "Off")), ("Storage used", ("2.4 GB", "17.9 GB", "512 MB")),
             ("Version", ("4.2.1", "10.0.3", "2024.6")), ("Privacy mode", ("On", "Off")),
             ("Show previews", ("Always", "Never")), ("Time zone", ("UTC", "UTC+2", "UTC-5")))


def _settings(rng: random.Random) -> tuple[Image.Image, list[str], int]:
    dark = rng.random() < 0.4
    bg: RGB = (32, 34, 37) if dark else (242, 242, 247)
    panel: RGB = (47, 49, 54) if dark else (255, 255, 255)
    ink: RGB = (230, 230, 235) if dark else (20, 20, 24)
    dim: RGB = (150, 155, 165) if dark else (110, 110, 120)
    size = rng.choice((15, 16, 18, 20))
    face, head = font("sans", size), font("sans-bold", size + 8)
    rows = rng.sample(_SETTINGS, rng.randint(5, 8))
    width = rng.choice((640, 720, 800))
    row_h = round(size * 2.6)
    height = 40 + head.size + 30 + row_h * len(rows) + 30
    image = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(image)
    title = rng.choice(("Settings", "Preferences", "Account settings", "App settings"))
    draw.text((30, 30), title, font=head, fill=ink)
    top = 40 + head.size + 20
    draw.rounded_rectangle((20, top, width - 20, top + row_h * len(rows) + 10), radius=12, fill=panel)
    truth = [title]
    for i, (label, values) in enumerate(rows):
        value = rng.choice(values)
        y = top + 5 + i * row_h + (row_h - size) // 2
        draw.text((40, y), label, font=face, fill=ink)
        draw.text((width - 40 - text_width(value, face), y), value, font=face, fill=dim)
        if i:
            draw.line((40, top + 5 + i * row_h, width - 40, top + 5 + i * row_h), fill=bg, width=1)
        truth.extend((label, value))
    return image, truth, size


def _receipt(rng: random.Random) -> tuple[Image.Image, list[str], int]:
    size = rng.choice((16, 18, 20))
    face, big = font("mono", size), font("mono-bold", size + 6)
    shop = f"{rng.choice(_WORDS).upper()} {rng.choice(('MARKET', 'CAFE', 'STORE', 'SHOP', 'BAKERY'))}"
    items = [(rng.choice(_WORDS).capitalize(), rng.randint(50, 2500)) for _ in range(rng.randint(3, 7))]
    total = sum(cents for _, cents in items)
    paper_w = rng.choice((380, 420, 460))
    line_h = round(size * 1.6)
    date = f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(2022, 2026)} {rng.randint(7, 21)}:" \
           f"{rng.randint(0, 59):02d}"
    rows: list[tuple[str, str]] = [(f"{name}", f"{cents / 100:.2f}") for name, cents in items]
    paper_h = 30 + big.size + 20 + line_h * (2 + len(rows) + 3) + 40
    paper = Image.new("RGB", (paper_w, paper_h), (250, 248, 240))
    draw = ImageDraw.Draw(paper)
    truth = [shop, date, f"Order #{rng.randint(100, 9999)}"]
    draw.text(((paper_w - text_width(shop, big)) // 2, 30), shop, font=big, fill=(25, 25, 25))
    y = 30 + big.size + 20
    for line in truth[1:]:
        draw.text(((paper_w - text_width(line, face)) // 2, y), line, font=face, fill=(40, 40, 40))
        y += line_h
    draw.line((20, y, paper_w - 20, y), fill=(120, 120, 120), width=1)
    y += line_h // 2
    for name, price in [*rows, ("TOTAL", f"{total / 100:.2f}")]:
        draw.text((24, y), name, font=big if name == "TOTAL" else face, fill=(30, 30, 30))
        value_face = big if name == "TOTAL" else face
        draw.text((paper_w - 24 - text_width(price, value_face), y), price, font=value_face, fill=(30, 30, 30))
        truth.extend((name, price))
        y += line_h
    thanks = rng.choice(("Thank you!", "Thanks for shopping!", "See you again"))
    y += line_h // 2
    draw.text(((paper_w - text_width(thanks, face)) // 2, y), thanks, font=face, fill=(40, 40, 40))
    truth.append(thanks)
    table: RGB = rng.choice(((70, 60, 50), (40, 40, 45), (120, 110, 100)))
    image = Image.new("RGB", (paper_w + 2 * rng.randint(60, 160), paper_h + 2 * rng.randint(40, 100)), table)
    image.paste(paper, ((image.width - paper_w) // 2, (image.height - paper_h) // 2))
    return image, truth, size


_LAYOUTS: dict[str, Callable[[random.Random], tuple[Image.Image, list[str], int]]] = {
    "chat": _chat, "terminal": _terminal, "settings": _settings, "receipt": _receipt, "desktop": _desktop,
    "phone": _phone,
}


def _screenshot(rng: random.Random, index: int) -> Sample:
    layout = tuple(_LAYOUTS)[index % len(_LAYOUTS)]
    image, truth, size = _LAYOUTS[layout](rng)
    return Sample(f"screenshot-{index:03d}", "screenshot", layout, size, _finish(image), tuple(truth))


def _meme(rng: random.Random, index: int) -> Sample:
    name, canvas = _photo_canvas(rng, _available(CAPTION_PHOTOS), 500, 900)
    draw = ImageDraw.Draw(canvas)
    truth: list[str] = []
    smallest = 0
    for place in ("top", "bottom"):
        text = sentence(rng, 2, 7).upper()
        size = max(28, min(72, canvas.width // 11))
        face = font("impact-like", size)
        stroke = max(2, size // 14)
        lines = _wrap(text, face, int(canvas.width * 0.92))
        while len(lines) > 2 and size > 28:
            size -= 4
            face = font("impact-like", size)
            stroke = max(2, size // 14)
            lines = _wrap(text, face, int(canvas.width * 0.92))
        lines = lines[:2]
        spacing = 1.15
        _, height = _block_size(lines, face, spacing, stroke)
        y = 12 if place == "top" else canvas.height - 12 - height
        _draw_lines(draw, (0, y), lines, face, (255, 255, 255), spacing, stroke=stroke, stroke_fill=(0, 0, 0),
                    align_width=canvas.width)
        truth.extend(lines)
        smallest = min(smallest or size, size)
    return Sample(f"meme-{index:03d}", "meme", name, smallest, _finish(canvas, jpeg_quality=rng.randint(75, 90)),
                  tuple(truth))


_MAKERS: dict[str, Callable[[random.Random, int], Sample]] = {
    "plain": _plain, "photo": _photo, "rotated": _rotated, "screenshot": _screenshot, "meme": _meme,
}


# ----------------------------------------------------------------------------- photos without text

_NOTEXT_VARIANTS = ("original", "mirror", "flip", "crop-centre", "crop-corner", "rotate-90", "phone-size",
                    "downscale-half")
#: Longest sides of photos as posted: a phone camera's picture reaches the reader fitted to 1920 px,
#: smaller ones are shared or edited copies. The bundled photos are 300-1400 px, so all variants but
#: "original" and "downscale-half" are brought to one of these (the gate's cost depends on it).
_POSTED_SIDES = (1280, 1600, 1920, 1920)


def _notext(index: int, seed: int) -> Sample:
    names = _available(NOTEXT_PHOTOS)
    name = names[index % len(names)]
    variant = _NOTEXT_VARIANTS[(index // len(names)) % len(_NOTEXT_VARIANTS)]
    rng = random.Random(f"{seed}:notext:{index}")
    image = photos()[name].image
    if variant == "mirror":
        image = ImageOps.mirror(image)
    elif variant == "flip":
        image = ImageOps.flip(image)
    elif variant == "crop-centre":
        w, h = image.size
        image = image.crop((w // 6, h // 6, w - w // 6, h - h // 6))
    elif variant == "crop-corner":
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.5, 0.7)), int(h * rng.uniform(0.5, 0.7))
        x, y = rng.choice(((0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)))
        image = image.crop((x, y, x + cw, y + ch))
    elif variant == "rotate-90":
        image = image.rotate(90, expand=True)
    elif variant == "downscale-half":  # a thumbnail-sized repost
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
    if variant not in ("original", "downscale-half"):
        longest = MAX_SIDE if variant == "phone-size" else rng.choice(_POSTED_SIDES)
        scale = longest / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    return Sample(f"notext-{index:03d}", "notext", f"{name}/{variant}", 0, _finish(image, jpeg_quality=90), ())


# ----------------------------------------------------------------------------- the corpus


def iter_corpus(seed: int = 0, per_category: int = DEFAULT_PER_CATEGORY, notext: int = DEFAULT_NOTEXT
                ) -> Iterator[Sample]:
    """Text samples category by category, then the photos without text; deterministic for a seed.

    Each sample has its own generator (seeded by seed, category and index), so the first ``n`` of a
    category are the same images whatever ``per_category`` is.
    """
    for category in CATEGORIES:
        for index in range(per_category):
            yield _MAKERS[category](random.Random(f"{seed}:{category}:{index}"), index)
    for index in range(notext):
        yield _notext(index, seed)


def build_corpus(seed: int = 0, per_category: int = DEFAULT_PER_CATEGORY, notext: int = DEFAULT_NOTEXT
                 ) -> list[Sample]:
    return list(iter_corpus(seed, per_category, notext))


if __name__ == "__main__":  # a contact sheet of the first images of each category, to look at
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ocr_corpus_sheet.png")
    picked = [s for s in build_corpus(per_category=4, notext=4)]
    thumbs = [ImageOps.contain(s.image, (480, 360)) for s in picked]
    sheet = Image.new("L", (480 * 4, 360 * ((len(thumbs) + 3) // 4)), 128)
    for i, thumb in enumerate(thumbs):
        sheet.paste(thumb, ((i % 4) * 480, (i // 4) * 360))
    sheet.save(out)
    for s in picked:
        print(s.name, s.variant, s.font_px, s.image.size, s.lines)
