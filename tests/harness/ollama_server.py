"""A local server speaking Ollama's HTTP API, so langchain-ollama runs for real in tests.

Implements ``POST /api/chat`` (streaming NDJSON and non-streaming), ``GET /api/tags``,
``GET /api/version`` and ``POST /api/show``. Every chat request is recorded, so a test can assert
on the exact prompt the bot sent (the ``[Image Attached: ...]`` line must be in it). Replies come
from a callable (canned by default); ``delay_s`` makes the server slow, to exercise timeouts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Reply = Callable[[list[dict[str, Any]]], str]


def canned_reply(messages: list[dict[str, Any]]) -> str:
    """Echo how many images the prompt mentions, so tests can see the context got through."""
    prompt = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") != "system")
    return f"I can see {prompt.count('[Image Attached:')} image(s) in our chat."


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    options: dict[str, Any]

    @property
    def prompt_text(self) -> str:
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in self.messages)


@dataclass
class FakeOllamaServer:
    model: str = "llama3.2"
    reply: Reply = canned_reply
    delay_s: float = 0.0
    chunk_size: int = 12
    requests: list[ChatRequest] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeOllamaServer:
        app = web.Application()
        app.router.add_post("/api/chat", self._chat)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/version", self._version)
        app.router.add_post("/api/show", self._show)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOllamaServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _meta(self) -> dict[str, Any]:
        return {"model": self.model, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("model") != self.model:
            return web.json_response({"error": f"model '{body.get('model')}' not found"}, status=404)
        chat = ChatRequest(
            body["model"], body.get("messages", []), bool(body.get("stream", True)), body.get("options") or {}
        )
        self.requests.append(chat)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        text = self.reply(chat.messages)
        done = {
            **self._meta(),
            "done": True,
            "done_reason": "stop",
            "total_duration": 1_000_000,
            "prompt_eval_count": len(chat.prompt_text.split()),
            "eval_count": len(text.split()),
        }
        if not chat.stream:
            return web.json_response({**done, "message": {"role": "assistant", "content": text}})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for start in range(0, len(text), self.chunk_size):
            chunk = {
                **self._meta(),
                "done": False,
                "message": {"role": "assistant", "content": text[start : start + self.chunk_size]},
            }
            await response.write((json.dumps(chunk) + "\n").encode())
        await response.write((json.dumps({**done, "message": {"role": "assistant", "content": ""}}) + "\n").encode())
        await response.write_eof()
        return response

    async def _tags(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "models": [
                    {
                        "name": self.model,
                        "model": self.model,
                        "modified_at": "2026-11-23T00:00:00Z",
                        "size": 1,
                        "digest": "0" * 64,
                        "details": {
                            "format": "gguf",
                            "family": "test",
                            "parameter_size": "tiny",
                            "quantization_level": "none",
                        },
                    }
                ]
            }
        )

    async def _version(self, _: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0-test"})

    async def _show(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("model", body.get("name")) != self.model:
            return web.json_response({"error": "model not found"}, status=404)
        return web.json_response({"modelfile": "", "parameters": "", "template": "", "details": {}, "model_info": {}})
