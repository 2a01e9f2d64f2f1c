"""Photo quality measured from the pixels: sharpness, exposure, resolution and face framing.

The published recipe judged a photo only through a caption and a story, so it could not tell a
crisp headshot from a blurry one with the same caption. These measurements are plain image
statistics — no model, no randomness — so the same file always gets the same numbers.

Everything is measured on the image shrunk to :data:`QUALITY_SIZE` on its longest side (never
upscaled): sharpness then means "sharp at the size people see a profile photo", and values from a
12-megapixel phone photo and a 600-pixel crop are comparable. Resolution is judged separately from
the original size.

Face framing needs OpenCV's Haar cascade, which ships inside the ``opencv-python-headless`` wheel
(no download). Without OpenCV the framing part is reported as unavailable and the score is
renormalised over the other parts.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

QUALITY_SIZE: Final = 512
# Variance of the Laplacian (grey levels², at QUALITY_SIZE) mapped log-linearly onto 0..1: a
# Gaussian blur of 2 px on a 512 px photo lands near 10, ordinary sharp photos at 300-3000.
SHARP_LOW, SHARP_HIGH = 15.0, 300.0
# Mean luminance (0..1) that counts as well exposed, and where the score reaches zero.
BRIGHT_OK = (0.30, 0.70)
BRIGHT_ZERO = (0.06, 0.94)
# Share of pixels crushed to black / blown to white before it is a problem (a dark suit or a white
# background are normal, so the allowance is generous).
DARK_CLIP_OK, BRIGHT_CLIP_OK = 0.25, 0.15
# Standard deviation of luminance below which a photo looks flat / washed out.
FLAT_CONTRAST = 0.08
# Shortest original side (px): LinkedIn shows profile photos at 400 px; below 128 px it is a thumbnail.
RES_LOW, RES_HIGH = 128, 640
# Face box height as a share of the image height that reads as a headshot (Haar boxes cover
# brows-to-chin, so 0.2 is already a head-and-shoulders framing).
FACE_TINY, FACE_GOOD, FACE_TIGHT, FACE_MAX = 0.06, 0.18, 0.55, 0.85
# A face more than this far (share of the width) from the centre line starts to cost points.
FACE_OFF_CENTRE = 0.15


@dataclass(frozen=True)
class Face:
    """A detected face, as fractions of the measured image (0..1)."""

    x: float
    y: float
    width: float
    height: float

    @property
    def centre_x(self) -> float:
        return self.x + self.width / 2


@dataclass(frozen=True)
class Judgement:
    """One quality part: a 0..1 value and the plain-words reason behind it."""

    value: float
    reason: str


@dataclass(frozen=True)
class QualityReport:
    """Raw measurements of one photo; the ``*_judgement`` methods turn them into 0..1 parts."""

    width: int  # original size, as displayed
    height: int
    sharpness: float  # variance of the Laplacian at QUALITY_SIZE
    brightness: float  # mean luminance, 0..1
    contrast: float  # standard deviation of luminance, 0..1
    dark_clipped: float  # share of pixels at or below 8/255
    bright_clipped: float  # share of pixels at or above 247/255
    faces: tuple[Face, ...] | None  # None: no face detector installed

    @property
    def under_exposed(self) -> bool:
        return self.brightness < BRIGHT_OK[0] or self.dark_clipped > 2 * DARK_CLIP_OK

    @property
    def over_exposed(self) -> bool:
        return self.brightness > BRIGHT_OK[1] or self.bright_clipped > 2 * BRIGHT_CLIP_OK

    @property
    def flat(self) -> bool:
        return self.contrast < FLAT_CONTRAST

    def sharpness_judgement(self) -> Judgement:
        value = _log_ramp(self.sharpness, SHARP_LOW, SHARP_HIGH)
        if value >= 0.7:
            reason = "sharp and in focus"
        elif value >= 0.35:
            reason = "a little soft (slightly out of focus)"
        else:
            reason = "blurry or out of focus"
        return Judgement(value, reason)

    def exposure_judgement(self) -> Judgement:
        low, high = BRIGHT_OK
        zero_low, zero_high = BRIGHT_ZERO
        if self.brightness < low:
            level = _clamp((self.brightness - zero_low) / (low - zero_low))
        elif self.brightness > high:
            level = _clamp((zero_high - self.brightness) / (zero_high - high))
        else:
            level = 1.0
        contrast = _clamp(self.contrast / FLAT_CONTRAST)
        clipping = 1.5 * max(0.0, self.dark_clipped - DARK_CLIP_OK)
        clipping += 2.0 * max(0.0, self.bright_clipped - BRIGHT_CLIP_OK)
        value = _clamp(min(level, contrast) - clipping)
        percent = f"average brightness {self.brightness:.0%}"
        if self.under_exposed:
            reason = f"too dark, under-exposed ({percent})"
        elif self.over_exposed:
            reason = f"too bright, over-exposed ({percent})"
        elif self.flat:
            reason = "flat and washed out (low contrast)"
        elif clipping > 0:
            reason = "large areas crushed to black or blown to white"
        else:
            reason = f"well exposed ({percent})"
        return Judgement(value, reason)

    def resolution_judgement(self) -> Judgement:
        short = min(self.width, self.height)
        value = _log_ramp(short, RES_LOW, RES_HIGH)
        size = f"{self.width}×{self.height}"
        if value >= 0.8:
            reason = f"high enough resolution ({size})"
        elif value >= 0.4:
            reason = f"modest resolution ({size}); fine when shown small"
        else:
            reason = f"low resolution ({size}); it will look pixelated"
        return Judgement(value, reason)

    def framing_judgement(self) -> Judgement | None:
        """None when no face detector is installed (the part is then skipped, not zero)."""
        if self.faces is None:
            return None
        if not self.faces:
            # Haar cascades miss turned heads and sunglasses too, so this is a weak "no".
            return Judgement(0.25, "no clear face found; a profile photo should show your face")
        if len(self.faces) > 1:
            return Judgement(0.3, f"{len(self.faces)} faces; a profile photo should show only you")
        face = self.faces[0]
        size = face.height
        if size < FACE_TINY:
            value, reason = 0.2, "your face is tiny in the frame; crop much closer"
        elif size < FACE_GOOD:
            value = 0.2 + 0.8 * (size - FACE_TINY) / (FACE_GOOD - FACE_TINY)
            reason = "your face is small in the frame; crop closer"
        elif size <= FACE_TIGHT:
            value, reason = 1.0, "one face, well framed"
        else:
            value = 1.0 - 0.4 * _clamp((size - FACE_TIGHT) / (FACE_MAX - FACE_TIGHT))
            reason = "a very tight crop; leave a little room around your head"
        offset = abs(face.centre_x - 0.5)
        if offset > FACE_OFF_CENTRE:
            value *= 1.0 - _clamp((offset - FACE_OFF_CENTRE) * 2.0)
            reason += "; the face is off-centre"
        return Judgement(_clamp(value), reason)


def measure_quality(image: Image.Image, original_size: tuple[int, int]) -> QualityReport:
    """Measure ``image`` (an upright RGB picture, ideally already at most QUALITY_SIZE)."""
    if max(image.size) > QUALITY_SIZE:
        image = image.copy()
        image.thumbnail((QUALITY_SIZE, QUALITY_SIZE), Image.Resampling.BICUBIC)
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    luma = grey / 255.0
    return QualityReport(
        width=int(original_size[0]),
        height=int(original_size[1]),
        sharpness=round(laplacian_variance(grey), 3),
        brightness=round(float(luma.mean()), 4),
        contrast=round(float(luma.std()), 4),
        dark_clipped=round(float((grey <= 8).mean()), 4),
        bright_clipped=round(float((grey >= 247).mean()), 4),
        faces=detect_faces(grey.astype(np.uint8)),
    )


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: edges make it large, blur makes it small."""
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return 0.0
    centre = grey[1:-1, 1:-1]
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * centre
    return float(laplacian.var())


_local = threading.local()


def _cascade() -> Any | None:
    """One Haar cascade per thread (OpenCV does not promise detectMultiScale is thread-safe)."""
    if not hasattr(_local, "cascade"):
        try:
            import cv2
        except ImportError:
            log.info("opencv-python-headless is not installed; /vibe skips face framing")
            _local.cascade = None
        else:
            cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
            _local.cascade = None if cascade.empty() else cascade
    return _local.cascade


def face_detection_available() -> bool:
    return _cascade() is not None


def detect_faces(grey: np.ndarray) -> tuple[Face, ...] | None:
    """Frontal faces, largest first; small stray detections next to a big face are dropped."""
    cascade = _cascade()
    if cascade is None:
        return None
    import cv2

    height, width = grey.shape
    smallest = max(24, min(height, width) // 12)
    # Equalising first keeps the detector's false positives on textures (petals, foliage) down.
    boxes = cascade.detectMultiScale(
        cv2.equalizeHist(grey), scaleFactor=1.1, minNeighbors=6, minSize=(smallest, smallest)
    )
    faces = sorted(
        (Face(x / width, y / height, w / width, h / height) for x, y, w, h in np.asarray(boxes).reshape(-1, 4)),
        key=lambda face: (-face.height, face.x, face.y),
    )
    if not faces:
        return ()
    largest = faces[0].height
    return tuple(face for face in faces if face.height >= 0.4 * largest)


def _clamp(value: float, low: float = 0.0, high: float = 1.0) -> float:
    return min(high, max(low, value))


def _log_ramp(value: float, low: float, high: float) -> float:
    """0 at or below ``low``, 1 at or above ``high``, linear in log space between."""
    if value <= low:
        return 0.0
    return _clamp(math.log(value / low) / math.log(high / low))
