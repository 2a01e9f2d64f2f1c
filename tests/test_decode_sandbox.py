"""The isolated decoder (bot/decode_sandbox.py): hostile files are killed, not waited for.

Real worker processes, real Pillow, real hostile files built here. Nothing asserts a duration: a
"slow" file is one whose decode cannot finish within a limit far below its decode time.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from bot.decode_sandbox import DecodeSandbox, DecodeTimedOut
from bot.errors import UserFacingError
from bot.imaging import ImageTooManyPixels, UnsupportedImageType, decode_image
from tests.hostile_corpus import progressive_with_repeated_last_scan

ROOT = Path(__file__).resolve().parents[1]


def big_rgba_png(side: int = 7000) -> bytes:
    """49 MP of RGBA (under the 50 MP pixel limit): ~200 MB once decoded, under 1 MB as a file."""
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (10, 200, 30, 128)).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


@pytest.fixture
def photo_bytes(photos) -> bytes:
    return photos["chelsea"]


@pytest.fixture
def sandbox():
    with DecodeSandbox(workers=1, timeout_s=30) as box:
        yield box


def test_a_normal_photo_decodes_exactly_as_in_process(sandbox, photo_bytes):
    isolated = sandbox.decode(photo_bytes, filename="photo.jpg")
    local = decode_image(photo_bytes)
    assert isolated.image.tobytes() == local.image.tobytes()
    assert (isolated.format, isolated.original_size, isolated.frame_count) == (
        local.format, local.original_size, local.frame_count)


def test_a_refusal_comes_back_as_the_same_typed_error(sandbox):
    with pytest.raises(UnsupportedImageType) as caught:
        sandbox.decode(b"%PDF-1.7 not a picture", filename="report.png")
    assert isinstance(caught.value, UserFacingError)
    assert caught.value.user_message.startswith('The file "report.png" looks like a PDF document')
    assert caught.value.code == "unsupported_type"


def test_a_decode_past_the_time_limit_is_killed_and_the_worker_replaced(photo_bytes):
    bomb = progressive_with_repeated_last_scan(4096, 60)
    with DecodeSandbox(workers=1, timeout_s=30) as box:
        started = time.perf_counter()
        box.decode(bomb)  # it is a valid picture, only slow: calibrate the limit against this machine
        honest = time.perf_counter() - started
        box.timeout_s = honest / 20
        first_pid = box._idle[0].process.pid
        with pytest.raises(DecodeTimedOut) as caught:
            box.decode(bomb, filename="bomb.jpg")
        assert "too long" in caught.value.user_message
        assert box.stats.timeouts == 1
        box.timeout_s = 30
        assert box.decode(photo_bytes).image.mode == "RGB"  # a fresh worker serves the next picture
        assert box._idle[0].process.pid != first_pid
        _wait_gone(first_pid)


def test_a_decode_past_the_memory_limit_is_refused_and_the_next_one_works(photo_bytes):
    with DecodeSandbox(workers=1, timeout_s=60, memory_mb=192) as box:
        with pytest.raises(ImageTooManyPixels) as caught:
            box.decode(big_rgba_png(), filename="huge.png")
        assert "too many pixels" in caught.value.user_message
        assert box.decode(photo_bytes).image.mode == "RGB"
    with DecodeSandbox(workers=1, timeout_s=60, memory_mb=1024) as box:
        assert box.decode(big_rgba_png()).image.size == (384, 384)  # the default limit fits 49 MP RGBA


def test_without_isolation_the_same_interface_decodes_in_this_process(photo_bytes):
    box = DecodeSandbox(isolate=False)
    assert box.decode(photo_bytes).image.mode == "RGB"
    assert box.stats.workers_started == 0


def test_decoder_processes_exit_when_the_bot_is_killed(tmp_path):
    """kill -9 of the parent: the workers read EOF on their pipe and exit (no orphans left spinning)."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from bot.decode_sandbox import DecodeSandbox
        if __name__ == "__main__":
            box = DecodeSandbox(workers=2)
            box.start()
            while len(box._idle) < 2:
                time.sleep(0.05)
            print(" ".join(str(w.process.pid) for w in box._idle), flush=True)
            time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(children) == 2
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        for pid in children:
            _wait_gone(pid)
    finally:
        parent.kill()


def _wait_gone(pid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # a child of ours that exited is a zombie until reaped
            if Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z":
                return
        except (OSError, IndexError):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still alive after {timeout}s")
