"""A local server speaking Ollama's HTTP API, so langchain-ollama runs for real in tests.

Implements ``POST /api/chat`` (streaming NDJSON and non-streaming), ``GET /api/tags``,
``GET /api/version`` and ``POST /api/show``. Every chat request is recorded, so a test can assert
on the exact prompt the bot sent (the ``[Image Attached: ...]`` line must be in it) and on the
pictures it carried (each message's ``images``, base64: :attr:`ChatRequest.images`). Replies come
from a callable (canned by default); ``delay_s`` makes the server slow, to exercise timeouts.

Models and their capabilities, as ``/api/show`` reports them: ``model`` plus any name in
``capabilities`` is installed; ``capabilities[name]`` is the list ``/api/show`` answers
(``["completion"]`` when not set; ``None`` leaves the key out, like older Ollama servers), and a name in
``projectors`` also gets a ``projector_info`` (older servers' only sign of a vision model). Every
``/api/show`` is recorded in ``show_requests`` (the model names asked about); ``show_status`` makes
it answer that HTTP error instead. A chat request with images for a model without ``vision`` is
refused like Ollama does (500 ``this model is missing data required for image input``) unless
``refuse_images`` is off; it is still recorded, with ``refused`` set.

Failure modes, as a real Ollama shows them (settable any time, read per request):

- ``pulled = False``: the model is not installed; ``/api/chat`` and ``/api/show`` answer 404 with
  Ollama's own body ``{"error":"model \"X\" not found, try pulling it first"}`` and ``/api/tags``
  lists nothing. (A request for another model than ``model`` gets the same 404.)
- ``stall``: the request is accepted and read, then the server goes quiet until ``resume`` is set
  (or the server closes): ``"before_headers"`` sends not a byte, ``"after_headers"`` sends
  ``200`` and the NDJSON headers but no line, ``"after_first_chunk"`` sends one chunk of the answer.
  ``stalled`` is set once a request has reached its stall point, so tests order on events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

Reply = Callable[[list[dict[str, Any]]], str]
Stall = Literal["before_headers", "after_headers", "after_first_chunk"]


def canned_reply(messages: list[dict[str, Any]]) -> str:
    """Echo how many images the prompt mentions, so tests can see the context got through."""
    prompt = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") != "system")
    return f"I can see {prompt.count('[Image Attached:')} image(s) in our chat."


NO_VISION_ERROR = "this model is missing data required for image input"


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    options: dict[str, Any]
    refused: bool = False  # answered with Ollama's "no image input" error (the model has no vision)

    @property
    def prompt_text(self) -> str:
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in self.messages)

    @property
    def images_by_message(self) -> list[list[str]]:
        """Each message's ``images`` field (base64 strings), in message order (the client leaves out empty ones)."""
        return [list(m.get("images") or []) for m in self.messages]

    @property
    def images(self) -> list[str]:
        """Every picture the request carried (base64), in prompt order."""
        return [image for images in self.images_by_message for image in images]

    @property
    def image_bytes(self) -> list[bytes]:
        return [base64.b64decode(image) for image in self.images]


@dataclass
class FakeOllamaServer:
    model: str = "llama3.2"
    reply: Reply = canned_reply
    delay_s: float = 0.0
    chunk_size: int = 12
    pulled: bool = True
    stall: Stall | None = None
    requests: list[ChatRequest] = field(default_factory=list)
    capabilities: dict[str, list[str] | None] = field(default_factory=dict)
    projectors: set[str] = field(default_factory=set)
    show_requests: list[str] = field(default_factory=list)
    show_status: int | None = None
    refuse_images: bool = True
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    finished: int = 0  # chat responses sent to the end (the last, "done" line written)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
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
        self._closing.set()  # let slow and stalled handlers end, so shutdown does not wait for them
        self.resume.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOllamaServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _meta(self) -> dict[str, Any]:
        return {"model": self.model, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def installed(self, model: object) -> bool:
        return self.pulled and (model == self.model or model in self.capabilities)

    def capabilities_of(self, model: str) -> list[str] | None:
        return self.capabilities.get(model, ["completion"])

    def has_vision(self, model: str) -> bool:
        return "vision" in (self.capabilities_of(model) or []) or model in self.projectors

    def _not_found(self, model: object) -> web.Response:
        # Ollama's words and status for a model that was never pulled (server/routes.go).
        return web.json_response({"error": f"model {json.dumps(model)} not found, try pulling it first"}, status=404)

    async def _hold(self) -> None:
        self.stalled.set()
        await self.resume.wait()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not self.installed(body.get("model")):
            return self._not_found(body.get("model"))
        chat = ChatRequest(
            body["model"], body.get("messages", []), bool(body.get("stream", True)), body.get("options") or {}
        )
        self.requests.append(chat)
        if chat.images and self.refuse_images and not self.has_vision(chat.model):
            chat.refused = True  # Ollama's runner refuses image input for a text-only model
            return web.json_response({"error": NO_VISION_ERROR}, status=500)
        if self.delay_s:  # slow, but cut short when the server closes (shutdown waits for handlers)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.delay_s)
        if self.stall == "before_headers":
            await self._hold()
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
            self.finished += 1
            return web.json_response({**done, "message": {"role": "assistant", "content": text}})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        pieces = [text[start : start + self.chunk_size] for start in range(0, len(text), self.chunk_size)]
        lines = [{**self._meta(), "done": False, "message": {"role": "assistant", "content": p}} for p in pieces]
        lines.append({**done, "message": {"role": "assistant", "content": ""}})
        try:
            await response.prepare(request)
            if self.stall == "after_headers":
                await self._hold()
            for index, line in enumerate(lines):
                await response.write((json.dumps(line) + "\n").encode())
                if index == 0 and self.stall == "after_first_chunk":
                    await self._hold()
            await response.write_eof()
        except ConnectionResetError:  # the client gave up on a stalled answer
            return response
        self.finished += 1
        return response

    async def _tags(self, _: web.Request) -> web.Response:
        if not self.pulled:
            return web.json_response({"models": []})
        names = [self.model, *(name for name in self.capabilities if name != self.model)]
        return web.json_response(
            {
                "models": [
                    {
                        "name": name,
                        "model": name,
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
                    for name in names
                ]
            }
        )

    async def _version(self, _: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0-test"})

    async def _show(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("model", body.get("name"))
        self.show_requests.append(str(name))
        if self.show_status is not None:
            return web.json_response({"error": "something went wrong"}, status=self.show_status)
        if not self.installed(name):
            return self._not_found(name)
        answer: dict[str, Any] = {"modelfile": "", "parameters": "", "template": "", "details": {},
                                  "model_info": {"general.architecture": "test"}}
        capabilities = self.capabilities_of(str(name))
        if capabilities is not None:
            answer["capabilities"] = capabilities
        if name in self.projectors:
            answer["projector_info"] = {"general.architecture": "clip", "clip.has_vision_encoder": True}
        return web.json_response(answer)
