"""The one shape of every error a person on Discord (or in the console) may be shown.

Each refusal or failure the bot can explain carries three things:

- ``user_message``: one polite sentence, free of jargon and of anything secret, shown verbatim;
- ``code``: a short stable string for logs and metrics (``"busy"``, ``"memory_unavailable"``);
- ``str(exc)``: the technical detail, for logs only.

Image refusals (:class:`bot.imaging.ImageRejected`), queue failures
(:class:`bot.inference.errors.InferenceError`), chat-model trouble and memory outages all derive from
:class:`UserFacingError`, so the Discord edge needs exactly one ``except`` clause and one tree-level
handler (``cogs/utils/errors.py``) to leave no interaction unanswered.

The errors cross process boundaries (the isolated decoder's worker processes, Ray replicas), so
pickling must round-trip them with their message and code: :meth:`UserFacingError.__reduce__` rebuilds
the same class with the same attributes instead of calling ``__init__`` with the wrong arguments (the
default ``Exception`` pickling replays ``args``, which subclasses with other signatures would misread).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["MemoryUnavailable", "UserFacingError", "rebuild_error"]


class UserFacingError(Exception):
    """Base of every error that carries a message meant for the user."""

    code: ClassVar[str] = "error"
    default_message: ClassVar[str] = "Something went wrong on my side — please try again."

    def __init__(self, user_message: str | None = None, *, detail: str | None = None, code: str | None = None) -> None:
        self.user_message: str = user_message or self.default_message
        self.detail: str | None = detail
        if code is not None:
            self.code = code  # an instance attribute shadows the class default
        super().__init__(detail or self.user_message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (rebuild_error, (type(self), str(self), dict(self.__dict__)))


def rebuild_error(cls: type[UserFacingError], message: str, state: dict[str, Any]) -> UserFacingError:
    """Unpickle helper: the same class and attributes, without running a subclass's ``__init__``."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


class MemoryUnavailable(UserFacingError):
    """The image memory (Chroma) cannot be reached right now; new pictures wait in the ledger."""

    code = "memory_unavailable"
    default_message = (
        "My picture memory is temporarily unavailable, so I can't search it right now — "
        "please try again in a few minutes. New pictures are kept and will be remembered once it is back."
    )
