"""Pre-flight checks (bot/preflight.py): each problem is one finding with the right severity.

Everything is local: the Ollama peer (tests/harness/ollama_server.py), "down" servers are a bound
127.0.0.1 port that nobody listens on, and the models are the tiny stand-ins. The checks do blocking
HTTP, so tests that need a peer on the event loop run them in a thread.
"""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import Settings
from bot.preflight import Finding, check_labels, check_llm, check_memory, check_model_files, report, run_checks
from tests.harness.ollama_server import FakeOllamaServer


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port that refuses connections (bound, never listening), reserved for the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def configured(base: Settings, **sections: dict) -> Settings:
    return base.model_copy(update={name: getattr(base, name).model_copy(update=values)
                                   for name, values in sections.items()})


@pytest.fixture
def settings(tiny_settings: Settings, tmp_path: Path, closed_port: int) -> Settings:
    """Tiny models, memory in this test's folder, no Ollama (a closed port)."""
    return configured(tiny_settings, memory={"path": str(tmp_path / "chroma")},
                      llm={"base_url": f"http://127.0.0.1:{closed_port}"})


def broken_labels(tmp_path: Path) -> Path:
    folder = tmp_path / "labels"
    folder.mkdir()
    (folder / "objects.txt").write_text("dog\ncat\n")  # the other required sets are missing
    return folder


async def test_every_check_passes_with_tiny_models_and_a_local_ollama(settings):
    async with FakeOllamaServer(model="llama3.2") as ollama:
        findings = await asyncio.to_thread(run_checks, configured(settings, llm={"base_url": ollama.base_url}))
    assert [(f.check, f.severity) for f in findings] == [
        ("labels", "ok"), ("models", "ok"), ("memory", "ok"), ("llm", "ok")]
    assert findings[2].message == f"memory: {settings.memory.path}"


def test_broken_label_files_are_fatal_and_name_the_folder(settings, tmp_path):
    folder = broken_labels(tmp_path)
    finding = check_labels(configured(settings, models={"tagger": settings.models.tagger.model_copy(
        update={"labels_dir": str(folder)})}))
    assert finding.severity == "error"
    assert f"{folder}: missing label sets: scenes, medium, mood, topics" in finding.message
    assert "labels_dir" in finding.message and "\n" not in finding.message


def test_a_malformed_label_line_names_file_and_line(settings, tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    for name in ("objects", "scenes", "medium", "mood", "topics"):
        (folder / f"{name}.txt").write_text("a\nb\n")
    (folder / "mood.txt").write_text("happy\nhappy\n")
    tagger = settings.models.tagger.model_copy(update={"labels_dir": str(folder)})
    finding = check_labels(configured(settings, models={"tagger": tagger}))
    assert finding.severity == "error"
    assert f"{folder / 'mood.txt'}:2: duplicate label 'happy'" in finding.message


def test_missing_model_offline_is_fatal_with_the_download_advice(settings):
    captioner = settings.models.captioner.model_copy(update={"model": "nobody/no-such-captioner"})
    finding = check_model_files(configured(settings, models={"captioner": captioner, "offline": True}))
    assert finding.severity == "error"
    assert "captioner model 'nobody/no-such-captioner' is not available locally" in finding.message
    assert "python -m bot models download" in finding.message


def test_several_missing_models_are_one_line(settings):
    models = {"captioner": settings.models.captioner.model_copy(update={"model": "nobody/cap"}),
              "sentiment": settings.models.sentiment.model_copy(update={"model": "nobody/senti"}),
              "offline": True}
    finding = check_model_files(configured(settings, models=models))
    assert finding.severity == "error"
    assert "captioner model 'nobody/cap', sentiment model 'nobody/senti' are not available locally" in finding.message
    assert "\n" not in finding.message


def test_missing_model_with_downloads_allowed_needs_a_reachable_hub(settings, monkeypatch, closed_port):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    captioner = settings.models.captioner.model_copy(update={"model": "nobody/no-such-captioner"})
    missing = configured(settings, models={"captioner": captioner, "offline": False})

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    finding = check_model_files(missing)
    assert finding.severity == "error"
    assert "it needs a download but 127.0.0.1 cannot be reached from here" in finding.message

    with socket.socket() as hub:  # a hub that accepts connections: the download happens at start-up
        hub.bind(("127.0.0.1", 0))
        hub.listen()
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{hub.getsockname()[1]}")
        finding = check_model_files(missing)
    assert finding.severity == "warning"
    assert "captioner model 'nobody/no-such-captioner' is not on this machine yet and will be downloaded now" \
        in finding.message


def test_models_on_a_ray_deployment_are_not_checked_here(settings):
    captioner = settings.models.captioner.model_copy(update={"model": "nobody/no-such-captioner"})
    finding = check_model_files(configured(settings, models={"captioner": captioner}, inference={"backend": "ray"}))
    assert finding.severity == "ok"


def test_chroma_server_down_is_fatal(settings, closed_port):
    finding = check_memory(configured(settings, memory={"backend": "http", "port": closed_port}))
    assert finding.severity == "error"
    server = f"http://127.0.0.1:{closed_port}"
    assert f"the Chroma server at {server} does not answer (Connection refused)" in finding.message
    assert 'backend = "embedded"' in finding.message


async def test_something_else_on_the_chroma_port_is_fatal(settings):
    async with FakeOllamaServer() as other:  # answers 404 to /api/v2/heartbeat: a server, but not Chroma
        memory = {"backend": "http", "port": other.port}
        finding = await asyncio.to_thread(check_memory, configured(settings, memory=memory))
    assert finding.severity == "error"
    assert "answered HTTP 404 to /api/v2/heartbeat" in finding.message


def test_memory_folder_that_cannot_be_created_is_fatal(settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    finding = check_memory(configured(settings, memory={"path": str(blocker / "chroma")}))
    assert finding.severity == "error"
    assert f"the memory folder {blocker / 'chroma'} is not writable" in finding.message


def test_ollama_down_is_a_warning(settings, closed_port):
    finding = check_llm(settings)
    assert finding.severity == "warning"
    server = f"http://127.0.0.1:{closed_port}"
    assert finding.message.startswith(f"no Ollama server answers at {server} (Connection refused)")
    assert "chatting falls back to describing pictures" in finding.message


@pytest.mark.parametrize(("configured_model", "listed"), [
    ("llama3.2", True), ("llama3.2:latest", True), ("mistral", False), ("llama3.2:1b", False)])
async def test_chat_model_must_be_pulled(settings, configured_model, listed):
    async with FakeOllamaServer(model="llama3.2:latest") as ollama:  # Ollama lists "llama3.2" as ":latest"
        llm = {"base_url": ollama.base_url, "model": configured_model}
        finding = await asyncio.to_thread(check_llm, configured(settings, llm=llm))
    if listed:
        assert finding.severity == "ok"
    else:
        assert finding.severity == "warning"
        assert finding.message == (
            f"the chat model `{configured_model}` is not installed on the Ollama server at {ollama.base_url}: "
            f"run `ollama pull {configured_model}`; chatting falls back to describing pictures")


def test_checks_stop_at_the_first_error_and_skip_memory_for_the_console(settings, tmp_path, closed_port):
    tagger = settings.models.tagger.model_copy(update={"labels_dir": str(broken_labels(tmp_path))})
    broken = configured(settings, models={"tagger": tagger}, memory={"backend": "http", "port": closed_port})
    assert [(f.check, f.severity) for f in run_checks(broken)] == [("labels", "error")]
    assert [f.check for f in run_checks(settings, memory=False)] == ["labels", "models", "llm"]


def test_report_prints_one_line_per_problem_and_says_whether_to_go_on():
    stream = io.StringIO()
    ok = Finding("labels", "ok", "5 label sets")
    warning = Finding("llm", "warning", "no Ollama")
    assert report([ok, warning], stream) is True
    assert stream.getvalue() == "warning: no Ollama\n"
    assert report([Finding("memory", "error", "no Chroma")], stream) is False
    assert stream.getvalue().splitlines()[-1] == "error: no Chroma"


async def test_a_download_at_start_up_says_how_big_it_is(settings, monkeypatch, tiny_models_dir):
    """The hub's file listing gives the size before anything is fetched (a local stand-in hub here)."""
    import huggingface_hub.constants

    from bot.models.hub import human_size
    from tests.helpers import FakeHub, served

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    files = served(tiny_models_dir / "tiny-random-blip")
    size = sum(len(data) for name, data in files.items() if not name.endswith((".h5", ".msgpack")))
    captioner = settings.models.captioner.model_copy(update={"model": "test/tiny-blip"})
    async with FakeHub({"test/tiny-blip": files}) as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        finding = await asyncio.to_thread(check_model_files, configured(settings, models={"captioner": captioner,
                                                                                            "offline": False}))
        assert not any(method == "GET" and "/resolve/" in path for method, path in hub.requests)  # nothing fetched
    assert finding.severity == "warning"
    assert finding.message.startswith(f"captioner model 'test/tiny-blip' is not on this machine yet and will be "
                                      f"downloaded now: about {human_size(size)} (first start only; ")
