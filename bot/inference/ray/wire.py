"""The Ray backend's wire format: what a replica answers, how a failure crosses, what HTTP callers get.

Why results travel as an :class:`Outcome` envelope rather than as raised exceptions: an exception
raised in a replica reaches the caller wrapped in a ``RayTaskError`` (a new class whose name is not
the original's), and Ray would retry or report it as a crash of ours. The envelope carries a bad
file's refusal, or a failure, as plain data (:class:`WireError`: kind, code, the user's sentence,
the detail and a few declared scalar fields), and the client rebuilds the *same* error type with
the same ``user_message`` through an explicit registry of the known types (:data:`KNOWN_ERRORS`).

Why a registry rather than pickled exceptions or a class-name lookup: a name from the wire must never
pick an arbitrary class (only the types listed here can be rebuilt, and only inside the family the
envelope's status allows: a refusal is always an :class:`~bot.imaging.ImageRejected`, a failure
always an :class:`~bot.inference.errors.InferenceError`), and nothing from the wire is ever
unpickled by our code or run as a constructor with foreign arguments. The same data is what the
HTTP door answers in JSON. (Over a deployment handle Ray itself serialises the envelope between the
processes of the cluster, which share one auth token; the envelope holds only plain data and our
own result records.)
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar, cast

import numpy as np

from bot.decode_sandbox import DecoderCrashed, DecodeTimedOut
from bot.errors import UserFacingError
from bot.imaging import (
    CorruptImage,
    DecodedImage,
    EmptyImage,
    ImageRejected,
    ImageTooLarge,
    ImageTooManyPixels,
    TooMuchMetadata,
    UnsupportedImageType,
)
from bot.inference.errors import InferenceError, JobTimeout, OutOfMemory, QueueBusy, QueueClosed, WorkerCrashed

__all__ = [
    "HTTP_ROUTE_PREFIX",
    "KNOWN_ERRORS",
    "TEXT_ROUTES",
    "Outcome",
    "WireError",
    "decoded_as_png",
    "http_answer",
    "texts_from_json",
]

#: Where the HTTP door's routes live on the Serve proxy (``POST /imagebot/analyze`` ...).
HTTP_ROUTE_PREFIX = "/imagebot"
#: The routes (and deployment methods) that take ``{"texts": [...]}``.
TEXT_ROUTES = ("embed_texts", "clip_texts", "score_sentiment")

Scalar = str | int | float | bool | None
E = TypeVar("E", bound=UserFacingError)

#: Every error type that crosses the wire as itself, keyed by ``kind`` (its class name), with the
#: attributes its own constructor sets besides the message (``ImageTooLarge(size, limit)``): those
#: travel as scalar fields. A type missing here crosses as its nearest listed base class with the same
#: code and sentence (``tests/test_ray_serve.py`` checks that every such type of the bot is listed).
KNOWN_ERRORS: Mapping[str, tuple[type[UserFacingError], tuple[str, ...]]] = {
    cls.__name__: (cls, fields)
    for cls, fields in (
        (ImageRejected, ()),
        (EmptyImage, ()),
        (ImageTooLarge, ("size", "limit")),
        (UnsupportedImageType, ("detected",)),
        (ImageTooManyPixels, ("width", "height", "limit")),
        (CorruptImage, ()),
        (TooMuchMetadata, ()),
        (DecodeTimedOut, ()),
        (DecoderCrashed, ()),
        (InferenceError, ()),
        (QueueBusy, ()),
        (JobTimeout, ()),
        (WorkerCrashed, ()),
        (OutOfMemory, ()),
        (QueueClosed, ()),
    )
}


def _known_kind(cls: type[BaseException]) -> str | None:
    """The registry key of ``cls`` or of its nearest listed base class (None: not a user-facing error)."""
    for base in cls.__mro__:
        if base.__name__ in KNOWN_ERRORS and KNOWN_ERRORS[base.__name__][0] is base:
            return base.__name__
    return None


@dataclass(frozen=True)
class WireError:
    """A refusal or failure as plain data: what the client needs to raise the same error again."""

    kind: str
    code: str
    user_message: str
    detail: str | None = None
    fields: Mapping[str, Scalar] = field(default_factory=dict)

    @classmethod
    def of(cls, exc: BaseException) -> WireError:
        """``exc`` as data. A user-facing error keeps its type (or its nearest listed base), code,
        sentence, detail and declared fields; anything else is a bug in the replica and crosses as
        :class:`WorkerCrashed` with the exception's type and text as the detail (for the logs)."""
        kind = _known_kind(type(exc))
        if kind is None or not isinstance(exc, UserFacingError):
            return cls.of(WorkerCrashed(f"{type(exc).__name__}: {exc}"))
        names = KNOWN_ERRORS[kind][1]
        fields = {name: value for name in names if _is_scalar(value := getattr(exc, name, None))}
        return cls(kind=kind, code=exc.code, user_message=exc.user_message, detail=exc.detail, fields=fields)

    def rebuild(self, family: type[E]) -> E:
        """The error on this side: the listed class for ``kind`` if it is a ``family``, else ``family``.

        ``family`` is what the envelope's status allows (:class:`ImageRejected` for a refused file,
        :class:`InferenceError` for a failure), so whatever the wire says, the caller's ``except``
        clauses see the kind of error they expect. The class's own constructor is not run (its
        arguments, like a file name, stayed on the replica): the common initialiser sets the code,
        sentence and detail, then the declared fields are set by name.
        """
        known = KNOWN_ERRORS.get(self.kind)
        target: type[UserFacingError] = known[0] if known is not None and issubclass(known[0], family) else family
        exc = target.__new__(target)
        code = self.code if self.code and self.code != target.code else None
        UserFacingError.__init__(exc, self.user_message or None, detail=self.detail or None, code=code)
        for name in KNOWN_ERRORS.get(target.__name__, (target, ()))[1]:
            if name in self.fields and _is_scalar(self.fields[name]):
                setattr(exc, name, self.fields[name])
        return cast(E, exc)


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


@dataclass(frozen=True)
class Outcome:
    """What a replica answers for one request: a result, a refused file, or a failure, as plain data.

    ``batch_size`` and ``predict_s`` describe the model batch the request rode in (for the client's
    metrics; they are 0 for a refusal that never reached the models).
    """

    status: Literal["ok", "rejected", "error"]
    value: Any = None
    error: WireError | None = None
    batch_size: int = 0
    predict_s: float = 0.0
    replica: str = ""

    @classmethod
    def failed(cls, exc: BaseException) -> Outcome:
        """A refused file (``rejected``) or any other failure (``error``) as an envelope."""
        return cls("rejected" if isinstance(exc, ImageRejected) else "error", error=WireError.of(exc))

    def unwrap(self) -> Any:
        """The result; or the refusal (an :class:`ImageRejected`) or failure (an :class:`InferenceError`) raised."""
        if self.status == "ok":
            return self.value
        error = self.error or WireError.of(InferenceError("the replica answered without a result"))
        if self.status == "rejected":
            raise error.rebuild(ImageRejected)
        raise error.rebuild(InferenceError)


# ---------------------------------------------------------------------------------------- bytes


def decoded_as_png(decoded: DecodedImage) -> bytes:
    """An already decoded image as bytes for a replica: a lossless PNG (upright and at most
    ``images.target_size`` already, so decoding it again in the replica changes no pixel)."""
    buffer = io.BytesIO()
    decoded.image.save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------- HTTP (JSON)


def texts_from_json(body: Any) -> list[str] | None:
    """The ``texts`` of a ``{"texts": [str, ...]}`` request body, or None when it is not that shape."""
    texts = body.get("texts") if isinstance(body, dict) else None
    if isinstance(texts, list) and all(isinstance(text, str) for text in texts):
        return texts
    return None


def http_answer(route: str, outcome: Outcome) -> tuple[dict[str, Any], int]:
    """The JSON body and status for an HTTP caller: ``{"analysis": {...}}`` (the full record, as
    ``describe --json``) / ``{"vectors": [[...]]}`` / ``{"sentiments": [...]}``, or
    ``{"error": code, "user_message": ...}`` with 422 (a bad file) or 500 (a failure)."""
    if outcome.status != "ok":
        error = outcome.error or WireError.of(InferenceError())
        return {"error": error.code, "user_message": error.user_message}, 422 if outcome.status == "rejected" else 500
    if route == "analyze":
        return {"analysis": outcome.value.to_dict()}, 200
    if route == "score_sentiment":
        return {"sentiments": [asdict(item) for item in outcome.value]}, 200
    return {"vectors": np.asarray(outcome.value).tolist()}, 200
