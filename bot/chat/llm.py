"""The conversational LLM: Ollama through langchain-ollama, streamed, bounded by two time limits.

Why streaming, and why two limits: an Ollama that accepts the connection and then never answers
(model loading forever, a wedged runner, a proxy holding the socket) used to keep people watching
"typing…" for the whole ``timeout_s`` (60 s) before the offline fallback. A healthy Ollama starts
streaming as soon as it has read the prompt, long before a CPU finishes the whole answer, so the
first chunk is the signal worth waiting for: :meth:`ChatLLM.stream` gives up after
``first_token_timeout_s`` (15 s) without one, and ``timeout_s`` still bounds the whole answer.
Loading a cold model and reading a long prompt both happen before that first chunk; on slow
CPU-only servers raise ``first_token_timeout_s`` (not measured here: no real Ollama in the tests).
Against the local peer (``tests/harness/ollama_server.py``), with ``first_token_timeout_s = 0.5`` and
``timeout_s = 30``, a server that accepts the request and stalls, before or after its headers, gets
the fallback answer in 0.54 s (median of 5, at most 0.57 s), where the total limit alone took 30 s.

The failures are :class:`bot.errors.UserFacingError` subclasses, so they carry a polite sentence
(``user_message``), a ``code`` (``llm_unavailable``, ``llm_timeout``, ``llm_model_missing``) and the
technical detail (``str(exc)``, logs only). A chat model that was never pulled is not an outage:
Ollama answers 404 ``model "X" not found, try pulling it first``, and :class:`LLMModelMissing` tells
the operator what to run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import ollama
from langchain_core.messages import BaseMessage
from langchain_ollama import ChatOllama

from bot.config import LLMSettings
from bot.errors import UserFacingError

log = logging.getLogger(__name__)


class LLMUnavailable(UserFacingError):
    """Ollama could not answer (down, timed out, model missing); ``str(exc)`` is the reason, for logs."""

    code = "llm_unavailable"
    default_message = "My language model is offline right now, so I can't chat properly."
    # True when Ollama (or whatever answers at base_url) answered the request with an error (an HTTP
    # error status, or an error line in the stream) rather than not answering at all: a request that
    # carried images may then be worth one more try without them (bot/chat/service.py).
    rejected: bool = False


class LLMTimeout(LLMUnavailable):
    """Ollama accepted the request but sent nothing in time (first chunk or whole answer)."""

    code = "llm_timeout"
    default_message = "My language model is not responding right now, so I can't chat properly."


class LLMModelMissing(LLMUnavailable):
    """The configured chat model is not pulled on the Ollama server (HTTP 404 from ``/api/chat``)."""

    code = "llm_model_missing"

    def __init__(self, model: str, *, detail: str | None = None) -> None:
        super().__init__(
            f"The chat model `{model}` is not installed on the Ollama server (`ollama pull {model}`), "
            "so I can't chat properly.",
            detail=detail,
        )
        self.model = model


def is_model_missing(exc: BaseException) -> bool:
    """Ollama's "model not pulled" answer: ``ollama.ResponseError`` with status 404 naming a model.

    A 404 from something that is not Ollama ("404 page not found" from a wrong ``base_url``) does not
    mention a model and stays a plain :class:`LLMUnavailable`.
    """
    if getattr(exc, "status_code", None) != 404:
        return False
    text = str(getattr(exc, "error", exc)).lower()
    return "not found" in text and ("model" in text or "try pulling" in text)


class ChatLLM:
    def __init__(self, settings: LLMSettings, *, temperature: float | None = None, seed: int | None = None) -> None:
        self.settings = settings
        self.model = ChatOllama(
            model=settings.model,
            base_url=settings.base_url,
            temperature=settings.temperature if temperature is None else temperature,
            num_ctx=settings.num_ctx,
            seed=seed,
            # httpx's own timeout covers connect/read; the deadlines in stream() cover the answer.
            client_kwargs={"timeout": settings.timeout_s},
        )

    async def stream(self, messages: Sequence[BaseMessage]) -> AsyncIterator[str]:
        """The answer's text as it arrives: non-empty deltas, unstripped.

        Raises :class:`LLMTimeout` when no chunk arrives within ``first_token_timeout_s`` (capped at
        ``timeout_s``) or the answer is not finished within ``timeout_s``, :class:`LLMModelMissing`
        when the model is not pulled, :class:`LLMUnavailable` for anything else. Time the caller
        spends between chunks counts towards ``timeout_s``.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        total = self.settings.timeout_s
        first = min(self.settings.first_token_timeout_s, total)
        chunks = aiter(self.model.astream(list(messages)))
        received = False
        try:
            while True:
                limit = total if received else first
                try:
                    async with asyncio.timeout_at(started + limit):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise self._timeout(received, limit) from None
                except Exception as exc:  # connection refused, HTTP errors, model not found, bad responses
                    raise self._unavailable(exc) from exc
                received = True
                content = chunk.content if isinstance(chunk.content, str) else str(chunk.content)
                if content:
                    yield content
        finally:
            await chunks.aclose()

    async def reply(self, messages: Sequence[BaseMessage]) -> str:
        """The whole answer, stripped; the same limits and errors as :meth:`stream`."""
        content = "".join([part async for part in self.stream(messages)])
        if not content.strip():
            raise LLMUnavailable(detail=f"empty answer from {self.settings.base_url}")
        return content.strip()

    def _timeout(self, received: bool, limit: float) -> LLMTimeout:
        where = self.settings.base_url
        if received:
            return LLMTimeout(detail=f"answer from {where} not finished within timeout_s={limit:g}s")
        return LLMTimeout(
            detail=f"no first token from {where} within first_token_timeout_s={limit:g}s "
                   "(the server accepted the request but sent nothing)")

    def _unavailable(self, exc: Exception) -> LLMUnavailable:
        if is_model_missing(exc):
            model = self.settings.model
            return LLMModelMissing(model, detail=(
                f"the chat model {model!r} is not installed on the Ollama server at {self.settings.base_url} "
                f"(ollama pull {model}); Ollama said: {getattr(exc, 'error', exc)}"))
        error = LLMUnavailable(detail=f"{type(exc).__name__}: {exc}")
        error.rejected = isinstance(exc, ollama.ResponseError)
        return error
