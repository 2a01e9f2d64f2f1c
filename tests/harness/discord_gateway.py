"""Gateway (websocket) side of the fake Discord server.

Implements the parts of https://discord.com/developers/docs/events/gateway that
discord.py uses: HELLO, IDENTIFY -> READY (+ GUILD_CREATE per guild), heartbeats,
RESUME with replay of missed events, INVALID_SESSION, RECONNECT, REQUEST_GUILD_MEMBERS,
sharding, and server-initiated disconnects so tests can exercise reconnect logic.

Only JSON encoding without transport compression is spoken: frames are sent as TEXT,
which discord.py accepts even though it asks for ``compress=zlib-stream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .discord_models import Intent

if TYPE_CHECKING:
    from .discord_server import FakeDiscordServer

JSON = dict[str, Any]
log = logging.getLogger("tests.harness.discord_gateway")

#: Builds an event's ``d`` for one session, or returns None to skip that session.
PayloadFactory = Callable[["GatewaySession"], JSON | None]


class Op:
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


@dataclass(eq=False)
class GatewaySession:
    """One identified shard session; survives reconnects until invalidated."""

    session_id: str
    shard_id: int
    shard_count: int
    intents: int
    identify: JSON
    seq: int = 0
    #: Every dispatched frame (seq, full frame) so RESUME can replay what was missed.
    history: list[tuple[int, JSON]] = field(default_factory=list)
    connection: GatewayConnection | None = None
    invalidated: bool = False
    resumes: int = 0

    def has_intent(self, bit: int) -> bool:
        return bool(self.intents & bit)

    def owns_guild(self, guild_id: int | None) -> bool:
        """Discord's shard formula; DMs go to shard 0."""
        if guild_id is None:
            return self.shard_id == 0
        return (guild_id >> 22) % self.shard_count == self.shard_id


@dataclass(eq=False)
class GatewayConnection:
    """One websocket; its writer task sends queued frames in order."""

    ws: web.WebSocketResponse
    request: web.Request
    path: str
    opened_at: float = field(default_factory=time.monotonic)
    session: GatewaySession | None = None
    heartbeats: int = 0
    outbox: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    writer: asyncio.Task[None] | None = None
    closed: bool = False

    def send(self, frame: JSON) -> None:
        if not self.closed:
            self.outbox.put_nowait(json.dumps(frame))

    async def run_writer(self) -> None:
        while True:
            text = await self.outbox.get()
            if text is None:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError) as exc:
                log.debug("gateway write failed (%s); dropping frame", exc)
                return


@dataclass(frozen=True)
class GatewayLogEntry:
    """A connection-level event, for tests asserting reconnect behaviour."""

    kind: str  # "connect", "identify", "resume", "resume_rejected", "close"
    path: str
    shard_id: int | None
    session_id: str | None
    detail: str = ""


class GatewayHub:
    """Owns gateway sessions/connections; the server calls :meth:`dispatch`."""

    def __init__(self, server: FakeDiscordServer) -> None:
        self.server = server
        self.sessions: dict[str, GatewaySession] = {}
        self.connections: list[GatewayConnection] = []
        self.log: list[GatewayLogEntry] = []
        self.presence_updates: list[JSON] = []
        self.heartbeat_interval_ms = 41250
        #: When False, IDENTIFY asking for a privileged intent is closed with 4014.
        self.privileged_intents_allowed = True

    # ------------------------------------------------------------------ queries
    def live_sessions(self) -> list[GatewaySession]:
        return [s for s in self.sessions.values() if not s.invalidated]

    def connected_sessions(self) -> list[GatewaySession]:
        return [s for s in self.live_sessions() if s.connection is not None]

    # ----------------------------------------------------------------- dispatch
    def dispatch(self, event: str, factory: PayloadFactory, *, guild_id: int | None) -> int:
        """Send event ``event`` to every live session owning ``guild_id``.

        Sessions that are momentarily disconnected still get a sequence number and
        the frame is kept for replay on RESUME, exactly like Discord.
        Returns how many sessions received it.
        """
        count = 0
        for session in self.live_sessions():
            if not session.owns_guild(guild_id):
                continue
            data = factory(session)
            if data is None:
                continue
            self._send_dispatch(session, event, data)
            count += 1
        return count

    def _send_dispatch(self, session: GatewaySession, event: str, data: JSON) -> None:
        session.seq += 1
        frame = {"op": Op.DISPATCH, "t": event, "s": session.seq, "d": data}
        session.history.append((session.seq, frame))
        if len(session.history) > 5000:
            del session.history[: len(session.history) - 5000]
        if session.connection is not None:
            session.connection.send(frame)

    # ------------------------------------------------------------- disconnects
    async def drop(
        self,
        *,
        code: int = 4000,
        abrupt: bool = False,
        invalidate: bool = False,
        shard_id: int | None = None,
    ) -> list[GatewaySession]:
        """Close live connections from the server side.

        ``invalidate=True`` forgets the sessions first, so the client's RESUME is
        answered with INVALID_SESSION and it has to IDENTIFY again.
        """
        dropped: list[GatewaySession] = []
        for session in self.live_sessions():
            if shard_id is not None and session.shard_id != shard_id:
                continue
            conn = session.connection
            if conn is None:
                continue
            session.connection = None  # from now on events are buffered for replay
            if invalidate:
                session.invalidated = True
            dropped.append(session)
            await self._close_connection(conn, code=code, abrupt=abrupt)
        return dropped

    def send_op(self, op: int, data: Any = None, *, shard_id: int | None = None) -> None:
        """Send a raw non-dispatch opcode (e.g. RECONNECT) to connected sessions."""
        for session in self.connected_sessions():
            if shard_id is not None and session.shard_id != shard_id:
                continue
            assert session.connection is not None
            session.connection.send({"op": op, "d": data, "s": None, "t": None})

    async def close_all(self) -> None:
        for conn in list(self.connections):
            await self._close_connection(conn, code=1001, abrupt=False)

    async def _close_connection(self, conn: GatewayConnection, *, code: int, abrupt: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        conn.outbox.put_nowait(None)
        self.log.append(
            GatewayLogEntry(
                "close",
                conn.path,
                conn.session.shard_id if conn.session else None,
                conn.session.session_id if conn.session else None,
                f"code={code} abrupt={abrupt}",
            )
        )
        if abrupt:
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
            return
        if conn.writer is not None and not conn.writer.done():
            try:
                await asyncio.wait_for(asyncio.shield(conn.writer), timeout=1.0)
            except asyncio.CancelledError:
                # The writer itself was cancelled (its peer, a bot process, was killed): that is not a
                # cancellation of this close, unless this task is being cancelled too.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            except Exception:
                pass
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.ws.close(code=code, message=b"harness close"), timeout=2.0)

    # ---------------------------------------------------------------- handler
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp handler for the gateway websocket."""
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        conn = GatewayConnection(ws=ws, request=request, path=request.path)
        conn.writer = asyncio.create_task(conn.run_writer(), name="fake-discord-gateway-writer")
        self.connections.append(conn)
        self.log.append(GatewayLogEntry("connect", request.path, None, None))
        conn.send({"op": Op.HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_frame(conn, json.loads(msg.data))
                elif msg.type == WSMsgType.ERROR:
                    break
                if conn.closed:
                    break
        except ConnectionError:
            pass
        finally:
            session = conn.session
            if session is not None and session.connection is conn:
                session.connection = None
            if not conn.closed:
                conn.closed = True
                conn.outbox.put_nowait(None)
                self.log.append(
                    GatewayLogEntry(
                        "close",
                        conn.path,
                        session.shard_id if session else None,
                        session.session_id if session else None,
                        f"client code={ws.close_code}",
                    )
                )
            if conn.writer is not None and not conn.writer.done():
                conn.writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await conn.writer
            with contextlib.suppress(ValueError):
                self.connections.remove(conn)
            self.server._bump()
        return ws

    async def _on_frame(self, conn: GatewayConnection, frame: JSON) -> None:
        op = frame.get("op")
        data = frame.get("d")
        if op == Op.HEARTBEAT:
            conn.heartbeats += 1
            conn.send({"op": Op.HEARTBEAT_ACK, "d": None})
        elif op == Op.IDENTIFY:
            await self._identify(conn, data or {})
        elif op == Op.RESUME:
            self._resume(conn, data or {})
        elif op == Op.PRESENCE_UPDATE:
            self.presence_updates.append(data or {})
        elif op == Op.REQUEST_GUILD_MEMBERS:
            self._request_members(conn, data or {})
        elif op == Op.VOICE_STATE_UPDATE:
            pass
        else:
            log.warning("fake gateway: unhandled opcode %r: %r", op, frame)
        self.server._bump()

    async def _identify(self, conn: GatewayConnection, data: JSON) -> None:
        if data.get("token") != self.server.token:
            log.error("fake gateway: IDENTIFY with wrong token %r", data.get("token"))
            await self._close_connection(conn, code=4004, abrupt=False)
            return
        intents = int(data.get("intents", 0))
        if intents & Intent.PRIVILEGED and not self.privileged_intents_allowed:
            await self._close_connection(conn, code=4014, abrupt=False)
            return
        shard_id, shard_count = data.get("shard") or [0, 1]
        session = GatewaySession(
            session_id=secrets.token_hex(16),
            shard_id=int(shard_id),
            shard_count=int(shard_count),
            intents=intents,
            identify=data,
        )
        self.sessions[session.session_id] = session
        session.connection = conn
        conn.session = session
        if data.get("presence"):
            self.presence_updates.append(data["presence"])
        self.log.append(GatewayLogEntry("identify", conn.path, session.shard_id, session.session_id))
        bot_id = self.server.bot_user.id
        guilds = [g for g in self.server.guilds.values() if session.owns_guild(g.id) and bot_id in g.members]
        self._send_dispatch(session, "READY", self.server._ready_payload(session, guilds))
        if session.has_intent(Intent.GUILDS):
            for guild in guilds:
                self._send_dispatch(session, "GUILD_CREATE", self.server._guild_create_payload(guild, session))

    def _resume(self, conn: GatewayConnection, data: JSON) -> None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or session.invalidated or data.get("token") != self.server.token:
            self.log.append(GatewayLogEntry("resume_rejected", conn.path, None, data.get("session_id")))
            conn.send({"op": Op.INVALID_SESSION, "d": False})
            return
        old = session.connection
        if old is not None and old is not conn:
            old.closed = True
            old.outbox.put_nowait(None)
        session.connection = conn
        conn.session = session
        session.resumes += 1
        last_seen = int(data.get("seq") or 0)
        replay = [frame for seq, frame in session.history if seq > last_seen]
        self.log.append(
            GatewayLogEntry("resume", conn.path, session.shard_id, session.session_id, f"replayed={len(replay)}")
        )
        for frame in replay:
            conn.send(frame)
        self._send_dispatch(session, "RESUMED", {})

    def _request_members(self, conn: GatewayConnection, data: JSON) -> None:
        session = conn.session
        if session is None:
            return
        guild = self.server.guilds.get(int(data.get("guild_id", 0)))
        if guild is None:
            return
        members = list(guild.members.values())
        user_ids = data.get("user_ids")
        if user_ids:
            wanted = {int(u) for u in ([user_ids] if isinstance(user_ids, str | int) else user_ids)}
            members = [m for m in members if m.user.id in wanted]
        query = data.get("query")
        if query:
            members = [m for m in members if m.user.username.lower().startswith(str(query).lower())]
        limit = int(data.get("limit") or 0)
        if limit:
            members = members[:limit]
        payload: JSON = {
            "guild_id": str(guild.id),
            "members": [m.to_payload() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce"):
            payload["nonce"] = data["nonce"]
        if data.get("presences"):
            payload["presences"] = []
        self._send_dispatch(session, "GUILD_MEMBERS_CHUNK", payload)
