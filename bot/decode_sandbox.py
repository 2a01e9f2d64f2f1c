"""Decoding of untrusted image bytes where it can be killed: a small pool of worker processes.

:func:`bot.imaging.decode_image` refuses what it can recognise as hostile cheaply (sizes, pixel
counts, metadata floods), but a file can still be built to make the codec itself slow (a JPEG whose
last progressive scan is repeated thousands of times kept a decode thread at 100 % CPU for minutes)
or to make it allocate without bound. A Python thread cannot be stopped from outside, so with
decoding in threads two such posts stopped all image analysis for everyone. A process can be killed.

How it works, and why:

- ``workers`` long-lived processes, started with ``spawn`` (the parent has torch's and the event
  loop's threads; ``fork`` would copy their locks mid-flight). Each imports only Pillow and
  :mod:`bot.imaging`, limits its own address space to what it maps after start-up plus
  ``decode_memory_mb`` (``RLIMIT_AS``; Linux; elsewhere only the time limit applies), ignores SIGINT
  (Ctrl-C is the parent's business) and sends its stderr to /dev/null (libtiff prints warnings with
  library source paths there).
- A call checks out an idle worker, sends the bytes over a pipe, and waits up to
  ``decode_timeout_s``. Past that the worker is killed (SIGKILL), a fresh one is started in its place
  (in the background, so the next caller does not pay the ~0.3 s start-up), and the caller gets
  :class:`DecodeTimedOut`. A worker that dies (the kernel's OOM killer, a codec crash) is replaced
  the same way and its caller gets :class:`DecoderCrashed`; a ``MemoryError`` inside the limit comes
  back as the decoder's own "too many pixels" refusal.
- Results travel back pickled: a :class:`~bot.imaging.DecodedImage` is at most ``target_size`` on
  its longest side (≤ 450 KB of RGB at 384 px), and refusals are
  :class:`~bot.errors.UserFacingError` subclasses, which pickle with their message and code.
- If the bot is killed (even ``kill -9``) the workers read EOF on their pipe and exit.

The cost on normal photos is one copy of the file through a pipe plus the pickled result: measured
in ``bench/results/decode_isolation.md``. Callers are blocking (the queue's decode threads, the
vibe scorer through ``asyncio.to_thread``); at most ``workers`` decodes run at once, the rest wait
for a free worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from bot.imaging import DecodedImage, ImageRejected, ImageTooManyPixels, decode_image

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from bot.config import ImageSettings

__all__ = ["DecodeSandbox", "DecodeTimedOut", "DecoderCrashed"]

log = logging.getLogger(__name__)

#: How long close() waits for a worker to exit after asking it to, before killing it.
_EXIT_GRACE_S = 1.0
#: How long a new worker may take to start (a fresh Python importing Pillow: ~0.3-1.5 s here).
_START_TIMEOUT_S = 120.0
_READY = "ready"


class DecodeTimedOut(ImageRejected):
    """The decode ran past ``images.decode_timeout_s``; its worker process was killed."""

    code = "decode_timeout"
    default_message = (
        "That image took far too long to open, so I gave up on it — it may be damaged or built to be "
        "slow to decode. Could you re-save it as a regular JPEG or PNG and try again?"
    )


class DecoderCrashed(ImageRejected):
    """The worker process died while decoding (out of memory, a codec crash); it was replaced."""

    code = "decoder_crashed"
    default_message = (
        "I couldn't open that image safely — it may be damaged or unusually large. "
        "Could you re-save it as a regular JPEG or PNG and try again?"
    )


@dataclass
class SandboxStats:
    """Counters for the logs and tests (read without a lock: a torn read only skews a count)."""

    decodes: int = 0
    timeouts: int = 0
    crashes: int = 0
    workers_started: int = 0


# --------------------------------------------------------------------------- the worker process


def _limit_memory(memory_bytes: int) -> None:
    """Address space: what this process already maps, plus ``memory_bytes`` for the decode.

    Relative, not absolute: a spawned child first imports its parent's main module, which may have
    mapped a lot already (a tool importing torch at the top maps gigabytes of virtual memory), and a
    limit below that would make every decode fail."""
    try:
        import resource
    except ImportError:  # Windows: no rlimits; the wall-clock limit still holds
        return
    try:
        resource.setrlimit(resource.RLIMIT_AS, (_mapped_bytes() + memory_bytes,) * 2)
    except (ValueError, OSError):  # macOS refuses RLIMIT_AS; a hard limit below the current one
        pass


def _mapped_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _worker_main(conn: Connection, memory_bytes: int) -> None:
    """Child process: decode requests until the pipe closes (the parent exited or closed us)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # libtiff & co. write warnings to fd 2 from C; nobody reads them, and they leak library paths
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        pass
    warnings.simplefilter("ignore")  # DecompressionBombWarning etc.: our own limits decide
    _limit_memory(memory_bytes)
    try:
        conn.send(_READY)  # imports done: from now on a decode's time limit measures only the decode
    except OSError:
        return
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        data, kwargs = request
        reply: tuple[str, Any]
        try:
            reply = ("ok", decode_image(data, **kwargs))
        except ImageRejected as exc:
            reply = ("rejected", exc)
        except MemoryError:
            reply = ("rejected", ImageTooManyPixels(filename=kwargs.get("filename"),
                                                    detail="MemoryError in the decoder process"))
        except BaseException as exc:  # a bug, not a bad file: report it, keep serving
            reply = ("error", f"{type(exc).__name__}: {exc}")
        del data, request
        try:
            conn.send(reply)
        except (MemoryError, OSError, ValueError) as exc:
            try:
                conn.send(("error", f"cannot send the result: {type(exc).__name__}"))
            except Exception:
                return


# --------------------------------------------------------------------------- the parent side


class _Worker:
    def __init__(self, context: Any, memory_bytes: int) -> None:
        parent_end, child_end = context.Pipe(duplex=True)
        self.conn: Connection = parent_end
        self.process: BaseProcess = context.Process(
            target=_worker_main, args=(child_end, memory_bytes), name="imagebot-decoder", daemon=True
        )
        self.process.start()
        child_end.close()  # ours closed: the child's recv() sees EOF when this end goes away
        # Wait for its imports, so that start-up never counts against the first decode's time limit.
        try:
            ready = self.conn.poll(_START_TIMEOUT_S) and self.conn.recv() == _READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise RuntimeError(f"a decoder process did not start within {_START_TIMEOUT_S:g}s")

    def kill(self) -> None:
        try:
            self.process.kill()
            self.process.join(_EXIT_GRACE_S)
        finally:
            self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(_EXIT_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(_EXIT_GRACE_S)
        self.conn.close()


class DecodeSandbox:
    """``decode(data, filename=...)`` like :func:`bot.imaging.decode_image`, in killable processes.

    Thread-safe; blocking. ``isolate=False`` decodes in the calling thread instead (no limits), for
    platforms that cannot start processes; the interface stays the same.
    """

    def __init__(
        self,
        *,
        workers: int = 2,
        timeout_s: float = 8.0,
        memory_mb: int = 1024,
        max_bytes: int | None = None,
        max_pixels: int | None = None,
        target_size: int | None = None,
        isolate: bool = True,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.timeout_s = timeout_s
        self.memory_bytes = memory_mb * 1024 * 1024
        self.isolate = isolate
        self._defaults = {key: value for key, value in
                          (("max_bytes", max_bytes), ("max_pixels", max_pixels), ("target_size", target_size))
                          if value is not None}
        self.stats = SandboxStats()
        self._context = multiprocessing.get_context("spawn")
        self._idle: list[_Worker] = []
        self._count = 0
        self._slots = threading.Semaphore(workers)  # one decode per worker at a time
        self._lock = threading.Lock()
        self._worker_ready = threading.Condition(self._lock)
        self._closed = False

    @classmethod
    def from_settings(cls, images: ImageSettings, *, workers: int) -> DecodeSandbox:
        return cls(workers=workers, timeout_s=images.decode_timeout_s, memory_mb=images.decode_memory_mb,
                   max_bytes=images.max_bytes, max_pixels=images.max_pixels, target_size=images.target_size,
                   isolate=images.isolate_decoding)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker processes now (else the first decodes start them, ~0.3 s each)."""
        if not self.isolate:
            return
        with self._lock:
            missing = max(0, self.workers - self._count)
            self._count += missing
        for _ in range(missing):
            self._add_worker()

    def close(self) -> None:
        """Stop the idle workers; a worker busy in a decode is stopped when that decode returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._worker_ready.notify_all()
        for worker in idle:
            worker.stop()

    def __enter__(self) -> DecodeSandbox:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ decoding

    def decode(self, data: bytes | bytearray | memoryview, *, filename: str | None = None,
               **limits: int) -> DecodedImage:
        """Decode untrusted bytes; raises :class:`~bot.imaging.ImageRejected` (incl. the two kinds
        above) for anything wrong with the file, RuntimeError only when the sandbox is closed."""
        kwargs: dict[str, Any] = {**self._defaults, **limits, "filename": filename}
        self.stats.decodes += 1
        if not self.isolate:
            return decode_image(data, **kwargs)
        with self._slots:
            return self._decode_in_worker(bytes(data), kwargs)

    def _decode_in_worker(self, data: bytes, kwargs: dict[str, Any]) -> DecodedImage:
        worker = self._checkout()
        try:
            worker.conn.send((data, kwargs))
            if not worker.conn.poll(self.timeout_s):
                self.stats.timeouts += 1
                log.warning("decoding %r ran past %.1fs: decoder process killed and replaced",
                            kwargs.get("filename"), self.timeout_s)
                self._replace(worker)
                raise DecodeTimedOut(detail=f"decode ran past {self.timeout_s:g}s")
            status, payload = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            self.stats.crashes += 1
            code = worker.process.exitcode
            log.warning("decoder process died while decoding %r (exit code %s): replaced",
                        kwargs.get("filename"), code)
            self._replace(worker)
            raise DecoderCrashed(detail=f"decoder process died (exit code {code}): {type(exc).__name__}") from None
        self._checkin(worker)
        if status == "ok":
            return payload  # type: ignore[no-any-return]
        if status == "rejected":
            raise payload
        raise RuntimeError(f"decoder process failed: {payload}")

    # ------------------------------------------------------------------ the pool
    # ``_count`` is every worker that exists or is being started (idle + busy + starting); it never
    # exceeds ``workers``. A caller takes an idle worker, or starts one if there is room, or waits.

    def _checkout(self) -> _Worker:
        with self._lock:
            while True:
                if self._closed:
                    raise RuntimeError("the decode sandbox is closed")
                if self._idle:
                    return self._idle.pop()
                if self._count < self.workers:
                    self._count += 1
                    break
                self._worker_ready.wait()
        try:
            return self._spawn()
        except BaseException:
            with self._lock:
                self._count -= 1
                self._worker_ready.notify()
            raise

    def _checkin(self, worker: _Worker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                self._worker_ready.notify()
                return
            self._count -= 1
        worker.stop()

    def _spawn(self) -> _Worker:
        worker = _Worker(self._context, self.memory_bytes)
        self.stats.workers_started += 1
        return worker

    def _add_worker(self) -> None:
        """Start one worker (already counted in ``_count``) and make it available."""
        try:
            worker = self._spawn()
        except Exception:
            log.exception("cannot start a decoder process")
            with self._lock:
                self._count -= 1
                self._worker_ready.notify()
            return
        self._checkin(worker)

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and start its replacement in the background (the caller has moved on)."""
        worker.kill()
        with self._lock:
            if self._closed:
                self._count -= 1
                return
        threading.Thread(target=self._add_worker, name="imagebot-decoder-restart", daemon=True).start()
