"""The conversational LLM: Ollama through langchain-ollama, bounded by a timeout."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from langchain_core.messages import BaseMessage
from langchain_ollama import ChatOllama

from bot.config import LLMSettings

log = logging.getLogger(__name__)


class LLMUnavailable(Exception):
    """Ollama could not answer (down, timed out, model missing); the reason is for logs only."""


class ChatLLM:
    def __init__(self, settings: LLMSettings, *, temperature: float | None = None, seed: int | None = None) -> None:
        self.settings = settings
        self.model = ChatOllama(
            model=settings.model,
            base_url=settings.base_url,
            temperature=settings.temperature if temperature is None else temperature,
            num_ctx=settings.num_ctx,
            seed=seed,
            # httpx's own timeout covers connect/read; asyncio.wait_for below covers the whole answer.
            client_kwargs={"timeout": settings.timeout_s},
        )

    async def reply(self, messages: Sequence[BaseMessage]) -> str:
        try:
            result = await asyncio.wait_for(self.model.ainvoke(list(messages)), timeout=self.settings.timeout_s)
        except TimeoutError:
            limit = self.settings.timeout_s
            raise LLMUnavailable(f"no answer from {self.settings.base_url} within {limit:.0f}s") from None
        except Exception as exc:  # connection refused, HTTP errors, model not found, bad responses
            raise LLMUnavailable(f"{type(exc).__name__}: {exc}") from exc
        content = result.content if isinstance(result.content, str) else str(result.content)
        if not content.strip():
            raise LLMUnavailable("empty answer")
        return content.strip()
