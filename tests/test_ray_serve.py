"""The Ray Serve backend against a real local Ray instance (127.0.0.1 only) with the tiny models.

One Ray instance and one deployment (two replicas, HTTP proxy on 127.0.0.1) serve the whole module:
starting Ray and loading models in replicas costs ~30 s, so it happens once. The reference for
"identical" is the in-process backend (InferenceQueue around the same Analyzer code) on the same
bytes. The replica-death test uses the deployment's ``crash_once_file`` hook: the first image batch
that finds the file removes it and ``os._exit``s the replica process, with that batch in flight.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

# Before Ray is imported: Ray reads this once, and with it a single-node instance binds to 127.0.0.1
# instead of the machine's outward address (its name says Windows/OSX; on Linux that is its effect).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
# Ray's token authentication with a throwaway token: otherwise ray.init writes one to ~/.ray/auth_token.
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

ray = pytest.importorskip("ray", reason="ray[serve] is not installed (pip install -e '.[ray]')")
serve = pytest.importorskip("ray.serve")

from bot.analysis import ImageAnalysis, Scored, Sentiment  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.decode_sandbox import DecoderCrashed, DecodeTimedOut  # noqa: E402
from bot.errors import UserFacingError  # noqa: E402
from bot.imaging import (  # noqa: E402
    CorruptImage,
    EmptyImage,
    ImageRejected,
    ImageTooLarge,
    ImageTooManyPixels,
    TooMuchMetadata,
    UnsupportedImageType,
    decode_image,
)
from bot.inference import (  # noqa: E402
    InferenceBackend,
    InferenceError,
    InferenceQueue,
    JobTimeout,
    OutOfMemory,
    Priority,
    QueueBusy,
    QueueClosed,
    QueueMetrics,
    WorkerCrashed,
)
from bot.inference.ray.client import RayInferenceClient  # noqa: E402
from bot.inference.ray.deploy import deploy  # noqa: E402
from bot.inference.ray.wire import HTTP_ROUTE_PREFIX, KNOWN_ERRORS, Outcome, WireError  # noqa: E402
from tests.helpers import free_port  # noqa: E402

TOLERANCE = 1e-5
DEPLOYMENT = "InferenceDeployment"


@pytest.fixture(scope="module")
def crash_flag() -> Iterator[Path]:
    """Where the crash-once hook looks; the file exists only while a test wants a replica to die."""
    folder = Path(tempfile.mkdtemp(prefix="imagebot-crash-"))
    yield folder / "crash-next-image-batch"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_settings(tiny_settings: Settings) -> Settings:
    return tiny_settings.model_copy(update={
        "inference": tiny_settings.inference.model_copy(update={"backend": "ray", "ray_replicas": 2}),
    })


@pytest.fixture(scope="module")
def ray_app(ray_settings: Settings, crash_flag: Path) -> Iterator[int]:
    """A local Ray (2 CPUs, 200 MB object store, no dashboard) with the app deployed; yields the HTTP port."""
    # A short temp dir: Ray puts unix sockets there, and those paths are limited to ~107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, _temp_dir=temp_dir,
        object_store_memory=200 * 1024 * 1024, log_to_driver=False, configure_logging=False,
    )
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1", "the test Ray must listen on loopback only"
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        deploy(ray_settings, route_prefix=HTTP_ROUTE_PREFIX, crash_once_file=str(crash_flag))
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest_asyncio.fixture
async def client(ray_app: int, ray_settings: Settings) -> AsyncIterator[RayInferenceClient]:
    """The bot's side, found by app name exactly as the bot finds it (Ray is already joined)."""
    async with RayInferenceClient(ray_settings) as ray_client:
        yield ray_client


@pytest_asyncio.fixture
async def local_queue(analyzer, tiny_settings: Settings) -> AsyncIterator[InferenceQueue]:
    """The in-process backend around the same analysis code: the reference for "identical"."""
    async with InferenceQueue(analyzer, tiny_settings.queue, tiny_settings.images) as queue:
        yield queue


# ------------------------------------------------------------------------------------- comparisons


def assert_same_scored(got: list[Scored], want: list[Scored]) -> None:
    """Same labels and scores, in the same order (two labels may swap only if their scores tie)."""
    assert len(got) == len(want)
    for mine, theirs in zip(got, want, strict=True):
        assert mine.score == pytest.approx(theirs.score, abs=TOLERANCE)
    by_label = {item.label: item.score for item in want}
    for item in got:
        assert item.label in by_label or any(abs(item.score - score) <= TOLERANCE for score in by_label.values())


def assert_same_sentiment(got: Sentiment | None, want: Sentiment | None) -> None:
    if want is None:
        assert got is None
        return
    assert got is not None and got.label == want.label
    assert got.scores == pytest.approx(want.scores, abs=TOLERANCE)


def assert_same_analysis(got: ImageAnalysis, want: ImageAnalysis) -> None:
    assert isinstance(got, ImageAnalysis)
    assert got.caption == want.caption
    assert set(got.labels) == set(want.labels)
    for name in want.labels:
        assert_same_scored(got.labels[name], want.labels[name])
    assert_same_scored(got.topics, want.topics)
    assert_same_scored(got.caption_topics, want.caption_topics)
    assert_same_sentiment(got.sentiment, want.sentiment)
    assert_same_sentiment(got.image_sentiment, want.image_sentiment)
    np.testing.assert_allclose(got.caption_embedding, want.caption_embedding, atol=TOLERANCE)
    np.testing.assert_allclose(got.image_embedding, want.image_embedding, atol=TOLERANCE)
    assert (got.model_ids, got.width, got.height, got.format, got.animated) == (
        want.model_ids, want.width, want.height, want.format, want.animated,
    )
    assert got.context_line() == want.context_line()


def replica_names(app: str) -> set[str]:
    """The live replica actors of the app (Serve names them SERVE_REPLICA::app#deployment#id)."""
    prefix = f"SERVE_REPLICA::{app}#{DEPLOYMENT}#"
    return {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith(prefix)}


async def wait_for_replicas(
    app: str, count: int, *, replacing: set[str] | frozenset[str] = frozenset(), limit_s: float = 90.0
) -> set[str]:
    """Until ``count`` replicas are alive, Serve calls them healthy, and (if given) not all of ``replacing``.

    Serve's status lags a death by a health-check period, so the actors themselves are checked too,
    and the state must hold for two polls in a row.
    """
    deadline, steady = time.monotonic() + limit_s, 0
    while True:
        names = await asyncio.to_thread(replica_names, app)
        status = await asyncio.to_thread(serve.status)
        deployment = status.applications[app].deployments[DEPLOYMENT]
        healthy = (len(names) == count and not (replacing and replacing <= names) and deployment.status == "HEALTHY"
                   and deployment.replica_states.get("RUNNING", 0) == count)
        steady = steady + 1 if healthy else 0
        if steady >= 2:
            return names
        assert time.monotonic() < deadline, f"replicas did not recover: {names} {deployment}"
        await asyncio.sleep(0.5)


# ------------------------------------------------------------------------------------- (a) identical


async def test_ray_mode_returns_the_same_analyses_as_in_process_mode(
    client: RayInferenceClient, local_queue: InferenceQueue, photos: dict[str, bytes]
) -> None:
    names = sorted(photos)
    remote = await asyncio.gather(*(client.analyze(photos[name], filename=f"{name}.jpg") for name in names))
    local = await asyncio.gather(*(local_queue.analyze(photos[name], filename=f"{name}.jpg") for name in names))
    for name, got, want in zip(names, remote, local, strict=True):
        assert got.caption, name
        assert_same_analysis(got, want)
    assert client.metrics.count("ok", "image") == len(names)
    assert {replica["model_ids"]["captioner"] for replica in client.replicas} == {"./tiny-random-blip"}


async def test_ray_mode_matches_the_analyzer_called_directly(
    client: RayInferenceClient, analyzer, ray_settings: Settings, photos: dict[str, bytes]
) -> None:
    images = ray_settings.images
    want = analyzer.analyze([
        decode_image(photos["chelsea"], max_bytes=images.max_bytes, max_pixels=images.max_pixels,
                     target_size=images.target_size)
    ])[0]
    assert_same_analysis(await client.analyze(photos["chelsea"]), want)


async def test_ray_mode_answers_the_two_tiers_with_the_full_analysis(
    client: RayInferenceClient, local_queue: InferenceQueue, photos: dict[str, bytes]
) -> None:
    """No tiers on a cluster: analyze_fast gives the complete record (and no decoded image), and
    caption(), never needed after it, still gives the caption part the local queue would; a priority
    is accepted and ignored."""
    record, decoded = await client.analyze_fast(photos["rocket"], filename="rocket.jpg", priority=Priority.BACKGROUND)
    assert decoded is None and not record.caption_pending
    assert_same_analysis(record, await local_queue.analyze(photos["rocket"], filename="rocket.jpg"))

    fast, local_decoded = await local_queue.analyze_fast(photos["rocket"], filename="rocket.jpg")
    remote_part = await client.caption(local_decoded, priority=Priority.INTERACTIVE)
    local_part = await local_queue.caption(local_decoded)
    assert remote_part.caption == local_part.caption and remote_part.model_ids == local_part.model_ids
    assert_same_sentiment(remote_part.sentiment, local_part.sentiment)
    assert_same_scored(remote_part.caption_topics, local_part.caption_topics)
    np.testing.assert_allclose(remote_part.caption_embedding, local_part.caption_embedding, atol=TOLERANCE)
    assert_same_analysis(fast.with_caption(remote_part), record)
    vectors = await client.embed_texts(["a rocket"], priority=Priority.BACKGROUND)
    np.testing.assert_allclose(vectors, await local_queue.embed_texts(["a rocket"]), atol=TOLERANCE)


# ------------------------------------------------------------------------------------- (c) bad files


BAD_FILES = [
    ("empty.png", b"", EmptyImage),
    ("doc.pdf", b"%PDF-1.7\n" + b"\x00" * 64, UnsupportedImageType),
    ("notes.txt", b"hello, this is not a picture\n" * 4, UnsupportedImageType),
    ("cut.jpg", None, CorruptImage),  # the first half of a real JPEG
]


@pytest.mark.parametrize(("filename", "data", "expected"), BAD_FILES, ids=[row[0] for row in BAD_FILES])
async def test_a_bad_file_raises_the_decoders_own_error_on_the_client(
    client: RayInferenceClient, photos: dict[str, bytes], filename: str, data: bytes | None,
    expected: type[ImageRejected],
) -> None:
    payload = photos["coffee"][: len(photos["coffee"]) // 2] if data is None else data
    with pytest.raises(ImageRejected) as local:
        decode_image(payload, filename=filename)
    with pytest.raises(ImageRejected) as remote:
        await client.analyze(payload, filename=filename)
    assert type(remote.value) is type(local.value) is expected
    assert remote.value.user_message == local.value.user_message
    assert remote.value.code == local.value.code
    assert str(remote.value) == str(local.value)
    assert client.metrics.count("rejected", "image") == 1


def test_a_refusal_with_its_own_constructor_survives_the_wire() -> None:
    original = ImageTooLarge(30_000_000, 25_000_000, filename="huge.png")
    with pytest.raises(ImageRejected) as raised:
        Outcome.failed(original).unwrap()
    rebuilt = raised.value
    assert type(rebuilt) is ImageTooLarge
    assert (rebuilt.user_message, rebuilt.code, str(rebuilt)) == (original.user_message, original.code, str(original))
    assert (rebuilt.size, rebuilt.limit) == (30_000_000, 25_000_000)


def test_a_class_name_from_the_wire_cannot_pick_an_arbitrary_class() -> None:
    rebuilt = WireError(kind="Path", code="weird", user_message="no", detail="x").rebuild(ImageRejected)
    assert type(rebuilt) is ImageRejected
    assert (rebuilt.code, rebuilt.user_message) == ("weird", "no")


def _subclasses(cls: type) -> list[type]:
    direct: list[type] = cls.__subclasses__()
    return [found for sub in direct for found in (sub, *_subclasses(sub))]


ROUND_TRIP = [
    EmptyImage(),
    ImageTooLarge(30_000_000, 25_000_000, filename="huge.png"),
    UnsupportedImageType("pdf", filename="doc.pdf"),
    UnsupportedImageType("jpeg", user_message="odd colours", detail="mode=CMYK;16", code="unsupported_color_mode"),
    ImageTooManyPixels(20_000, 20_000, 50_000_000, filename="bomb.png"),
    CorruptImage(detail="truncated at byte 812"),
    TooMuchMetadata(detail="4,000 APP1 segments"),
    DecodeTimedOut(detail="decode ran past 10s"),
    DecoderCrashed(detail="decoder process died (exit code -9): EOFError"),
    QueueBusy("64 jobs in flight"),
    JobTimeout("no result within 30s"),
    WorkerCrashed("RuntimeError: kernel failure"),
    OutOfMemory("out of memory even for a single job"),
    QueueClosed(),
    InferenceError("preprocessing failed: ValueError: bad shape"),
]


@pytest.mark.parametrize("original", ROUND_TRIP, ids=lambda exc: f"{type(exc).__name__}-{exc.code}")
def test_every_known_error_crosses_the_wire_as_itself(original: UserFacingError) -> None:
    """Type, code, the user's sentence, the detail and the constructor's own fields survive the envelope."""
    outcome = Outcome.failed(original)
    assert outcome.status == ("rejected" if isinstance(original, ImageRejected) else "error")
    with pytest.raises(type(original)) as raised:
        outcome.unwrap()
    rebuilt = raised.value
    assert type(rebuilt) is type(original)
    assert (rebuilt.code, rebuilt.user_message, rebuilt.detail, str(rebuilt)) == (
        original.code, original.user_message, original.detail, str(original))
    assert vars(rebuilt) == vars(original)


def test_every_user_facing_error_type_of_the_decoder_and_the_queue_is_registered() -> None:
    """A new refusal or queue failure must be added to the wire's registry (else it crosses as its base)."""
    found = _subclasses(ImageRejected) + _subclasses(InferenceError)
    ours = {cls for cls in found if cls.__module__.startswith("bot.")}
    assert ours | {ImageRejected, InferenceError} == {cls for cls, _ in KNOWN_ERRORS.values()}


def test_an_unregistered_error_crosses_as_its_nearest_registered_base() -> None:
    class StrangeFile(CorruptImage):
        code = "strange"

    rebuilt = WireError.of(StrangeFile(detail="odd")).rebuild(ImageRejected)
    assert type(rebuilt) is CorruptImage
    assert (rebuilt.code, rebuilt.user_message, str(rebuilt)) == ("strange", CorruptImage.default_message, "odd")


def test_a_bug_in_the_replica_crosses_as_a_worker_crash() -> None:
    with pytest.raises(WorkerCrashed) as raised:
        Outcome.failed(KeyError("caption_pixels")).unwrap()
    assert str(raised.value) == "KeyError: 'caption_pixels'"
    assert raised.value.user_message == WorkerCrashed.default_message


def test_the_envelope_status_decides_the_family_whatever_the_kind_says() -> None:
    """A refusal always raises an ImageRejected and a failure an InferenceError, so the caller's except
    clauses (and the metrics' outcome) never see the other family."""
    busy = WireError.of(QueueBusy("x"))
    with pytest.raises(ImageRejected) as refused:
        Outcome("rejected", error=busy).unwrap()
    assert type(refused.value) is ImageRejected and refused.value.code == "busy"
    empty = WireError.of(EmptyImage())
    with pytest.raises(InferenceError) as failed:
        Outcome("error", error=empty).unwrap()
    assert type(failed.value) is InferenceError and failed.value.code == "empty"


def test_only_declared_scalar_fields_are_set_on_the_rebuilt_error() -> None:
    wire = WireError(kind="ImageTooLarge", code="too_large", user_message="big", detail="d",
                     fields={"size": 5, "limit": [1, 2], "__class__": "Path", "user_message": "forged"})  # type: ignore[dict-item]
    rebuilt = wire.rebuild(ImageRejected)
    assert type(rebuilt) is ImageTooLarge and rebuilt.size == 5 and rebuilt.user_message == "big"
    assert not hasattr(rebuilt, "limit")


# ------------------------------------------------------------------------------------- (d) texts


TEXTS = ["a cat asleep on a keyboard", "sunset over the harbour", "I hate mondays", "best day ever!"]


async def test_text_embeddings_match_in_process(client: RayInferenceClient, analyzer) -> None:
    remote = await asyncio.gather(*(client.embed_texts([text]) for text in TEXTS), client.embed_texts(TEXTS))
    want = analyzer.embed_texts(TEXTS)
    np.testing.assert_allclose(np.vstack(remote[:-1]), want, atol=TOLERANCE)
    np.testing.assert_allclose(remote[-1], want, atol=TOLERANCE)
    assert (await client.embed_texts([])).shape == (0, 0)


async def test_clip_text_vectors_match_in_process(client: RayInferenceClient, analyzer) -> None:
    got = await client.clip_texts(TEXTS)
    np.testing.assert_allclose(got, analyzer.clip_texts(TEXTS), atol=TOLERANCE)
    assert got.dtype == np.float32


async def test_sentiment_matches_in_process(client: RayInferenceClient, local_queue: InferenceQueue) -> None:
    got = await client.score_sentiment(TEXTS)
    want = await local_queue.score_sentiment(TEXTS)
    assert len(got) == len(want)
    for mine, theirs in zip(got, want, strict=True):
        assert_same_sentiment(mine, theirs)
    assert await client.score_sentiment([]) == []


# ------------------------------------------------------------------------------------- the queue's contract


async def test_busy_timeout_closed_and_metrics(ray_app: int, ray_settings: Settings, photos: dict[str, bytes]) -> None:
    settings = ray_settings.model_copy(update={"queue": ray_settings.queue.model_copy(update={"max_queued": 1})})
    ray_client = RayInferenceClient(settings)
    await ray_client.start()
    first = asyncio.ensure_future(ray_client.analyze(photos["rocket"]))
    await asyncio.sleep(0)  # admitted
    with pytest.raises(QueueBusy):
        await ray_client.analyze(photos["rocket"])
    assert (await first).caption
    with pytest.raises(JobTimeout):
        await ray_client.analyze(photos["rocket"], timeout=0.0001)
    snapshot = ray_client.metrics.snapshot()
    assert (snapshot["busy"], snapshot["timeouts"], snapshot["jobs"]["ok"]) == (1, 1, 1)
    assert snapshot["running"] == 0 and snapshot["max_queued"] == 1
    assert "imagebot_inference_jobs_total" in ray_client.metrics.prometheus_text()
    await ray_client.close()
    assert not ray_client.running
    with pytest.raises(QueueClosed):
        await ray_client.embed_texts(["late"])
    assert ray.is_initialized(), "a client that did not start Ray must not shut it down"


async def test_start_fails_clearly_for_an_app_that_is_not_deployed(ray_app: int, ray_settings: Settings) -> None:
    settings = ray_settings.model_copy(update={
        "inference": ray_settings.inference.model_copy(update={"ray_app": "no-such-app"}),
    })
    with pytest.raises(Exception, match=r"no-such-app.*python -m bot serve-ray --config"):
        await RayInferenceClient(settings).start()


async def test_a_start_that_cannot_join_ray_gives_up_in_time_and_undoes_a_late_join(
    ray_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ray.init`` blocks (as it does for an unreachable cluster): start() still fails within
    ``queue.job_timeout_s`` naming the address, close() returns at once, the stuck call is in a daemon
    thread (so it cannot hold the process at exit), and a join that succeeds late is shut down again.

    Through a stand-in for the ``ray`` module the client calls, not the real Ray: a real join still
    running in this process would collide with the module's Ray instance (the end-to-end case is
    the subprocess test below)."""
    import bot.inference.ray.client as client_module

    release = threading.Event()
    calls: list[str] = []

    class StuckRay:
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(**kwargs: object) -> None:
            calls.append(f"init {kwargs['address']}")
            release.wait(60)

        @staticmethod
        def shutdown() -> None:
            calls.append("shutdown")

    monkeypatch.setattr(client_module, "ray", StuckRay)
    settings = ray_settings.model_copy(update={
        "inference": ray_settings.inference.model_copy(update={"ray_address": "127.0.0.1:1"}),
        "queue": ray_settings.queue.model_copy(update={"job_timeout_s": 0.5}),
    })
    ray_client = RayInferenceClient(settings)
    started = time.monotonic()
    with pytest.raises(InferenceError, match=r"cannot join the Ray cluster at '127\.0\.0\.1:1' "
                                             r"\(no answer within 0\.5s\); check inference\.ray_address") as failure:
        await ray_client.start()
    assert time.monotonic() - started < 5
    assert failure.value.user_message == "the inference backend could not start"
    joining = [thread for thread in threading.enumerate() if thread.name == "imagebot-ray-join"]
    assert joining and all(thread.daemon for thread in joining)
    try:
        await asyncio.wait_for(ray_client.close(), 2)
        assert not ray_client.running
        with pytest.raises(QueueClosed):
            await ray_client.analyze(b"late")
    finally:
        release.set()  # the cluster "answers" after all
        for thread in joining:
            thread.join(5)
    assert calls == ["init 127.0.0.1:1", "shutdown"], "a late join must be left again, not kept open"


@pytest.mark.parametrize("scheme", ["", "ray://"], ids=["gcs-address", "ray-client"])
def test_describe_with_an_unreachable_cluster_says_so_in_one_line_and_exits(
    scheme: str, tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """``python -m bot describe`` with nothing listening at ``ray_address``: one ``error:`` line and exit
    status 1 soon after ``queue.job_timeout_s``. Before, the process never exited for a GCS address
    (``ray.init`` retries it forever, and ``asyncio.run`` joined the thread it ran in) and took Ray
    Client's own ~30 s of retries for ``ray://``; the bound below is well under both."""
    config = tmp_path / "config.toml"
    address = f"{scheme}127.0.0.1:{free_port()}"
    config.write_text(f'[inference]\nbackend = "ray"\nray_address = "{address}"\n\n[queue]\njob_timeout_s = 1\n')
    image = tmp_path / "rocket.jpg"
    image.write_bytes(photos["rocket"])
    # Ray otherwise replaces 127.0.0.1 by the machine's outward address (docs/scale-out-ray.md).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bot", "--config", str(config), "describe", str(image)],
        cwd=Path(__file__).parent.parent, env=env, capture_output=True, text=True, timeout=180,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert elapsed < 25, (elapsed, result.stderr)  # start-up (imports) + 1 s + exit; not Ray's retries
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]], result.stderr
    assert errors[0].startswith(f"error: the inference backend could not start (cannot join the Ray cluster at "
                                f"{address!r} (no answer within 1s); check inference.ray_address")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_services_choose_the_backend_from_config(ray_settings: Settings, tiny_settings: Settings) -> None:
    from bot.services import Services

    assert isinstance(Services(ray_settings).queue, RayInferenceClient)
    assert isinstance(Services(tiny_settings).queue, InferenceQueue)


def _parameters(function: Callable[..., object]) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


async def test_both_backends_implement_all_of_the_backend_protocol(ray_settings: Settings, analyzer) -> None:
    """Either can be ``services.queue``: every member of InferenceBackend, with the same parameters,
    keyword defaults (priorities included) and async-ness, on both classes."""
    members = {name: member for name, member in vars(InferenceBackend).items()
               if not name.startswith("_") or name in ("__aenter__", "__aexit__")}
    assert {"start", "close", "analyze", "analyze_fast", "caption", "embed_texts", "clip_texts",
            "score_sentiment", "running"} <= set(members)
    local = InferenceQueue(analyzer)
    try:
        for backend in (local, RayInferenceClient(ray_settings)):
            assert isinstance(backend, InferenceBackend), type(backend).__name__
            assert isinstance(backend.metrics, QueueMetrics)
            for name, member in members.items():
                implementation = getattr(type(backend), name)
                if isinstance(member, property):
                    assert isinstance(implementation, property), name
                    continue
                assert _parameters(implementation) == _parameters(member), (type(backend).__name__, name)
                assert inspect.iscoroutinefunction(implementation) == inspect.iscoroutinefunction(member), name
    finally:
        await local.close()


# ------------------------------------------------------------------------------------- HTTP


def _post(port: int, route: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{HTTP_ROUTE_PREFIX}/{route}", data=body, method="POST",
        headers={"Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


async def test_http_ingress_on_loopback(
    ray_app: int, client: RayInferenceClient, photos: dict[str, bytes], analyzer
) -> None:
    status, body = await asyncio.to_thread(_post, ray_app, "analyze?filename=a.jpg", photos["astronaut"],
                                           "application/octet-stream")
    assert status == 200
    assert_same_analysis(ImageAnalysis.from_dict(body["analysis"]), await client.analyze(photos["astronaut"]))
    status, body = await asyncio.to_thread(_post, ray_app, "analyze", b"", "application/octet-stream")
    assert (status, body["error"]) == (422, "empty")
    assert body["user_message"] == EmptyImage.default_message
    payload = json.dumps({"texts": TEXTS[:2]}).encode()
    status, body = await asyncio.to_thread(_post, ray_app, "embed_texts", payload, "application/json")
    assert status == 200
    np.testing.assert_allclose(body["vectors"], analyzer.embed_texts(TEXTS[:2]), atol=TOLERANCE)


def test_main_is_importable_for_the_cli() -> None:
    from bot.inference.ray import deploy as ray_deploy

    with pytest.raises(SystemExit):
        ray_deploy.main(["--help"])


# ------------------------------------------------------------------------------------- (b) replica death
# Last in the module: each death costs a replica restart (~20 s on 2 CPUs), so nothing runs after them.


async def test_a_replica_killed_mid_batch_loses_no_job(
    client: RayInferenceClient, local_queue: InferenceQueue, photos: dict[str, bytes],
    crash_flag: Path, ray_settings: Settings,
) -> None:
    app, count = ray_settings.inference.ray_app, ray_settings.inference.ray_replicas
    before = await wait_for_replicas(app, count)
    names = sorted(photos) * 3
    expected = {name: await local_queue.analyze(photos[name]) for name in set(names)}
    await asyncio.to_thread(crash_flag.touch)
    try:
        results = await asyncio.gather(*(client.analyze(photos[name]) for name in names))
    finally:
        await asyncio.to_thread(crash_flag.unlink, missing_ok=True)
    assert len(results) == len(names)  # none lost ...
    for name, got in zip(names, results, strict=True):
        assert_same_analysis(got, expected[name])  # ... and each caller got its own image's analysis
    assert client.retries_total >= 1, "the hook should have killed a replica with jobs in flight"
    assert client.metrics.snapshot()["worker_restarts"] >= 1
    assert client.metrics.count("ok", "image") == len(names)
    assert client.metrics.count("worker_crashed") == 0
    after = await wait_for_replicas(app, count, replacing=before)
    assert len(before - after) == 1, "exactly one replica died and was replaced"


async def test_a_replica_killed_with_ray_kill_loses_no_job(
    client: RayInferenceClient, local_queue: InferenceQueue, photos: dict[str, bytes], ray_settings: Settings
) -> None:
    """The same through Ray's own kill (SIGKILL of the actor), while a stream of jobs is running."""
    app, count = ray_settings.inference.ray_app, ray_settings.inference.ray_replicas
    victim = sorted(await wait_for_replicas(app, count))[0]
    names = sorted(photos) * 4
    expected = {name: await local_queue.analyze(photos[name]) for name in set(names)}
    jobs = [asyncio.ensure_future(client.analyze(photos[name])) for name in names]
    await asyncio.sleep(0.05)  # jobs are on their way to both replicas
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    results = await asyncio.gather(*jobs)
    for name, got in zip(names, results, strict=True):
        assert_same_analysis(got, expected[name])
    assert client.metrics.count("ok", "image") == len(names)
    # The last test of the module: no need to wait ~20 s for Serve's replacement replica.
