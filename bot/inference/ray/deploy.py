"""Deploying the inference app on a Ray cluster: ``python -m bot serve-ray --config PATH``.

:func:`build_app` turns the settings into a Serve application of
:class:`~bot.inference.ray.replica.InferenceDeployment` replicas (``inference.ray_replicas`` of them,
or an autoscaling range; ``inference.ray_gpus_per_replica`` GPUs each, 0.5 putting two on a GPU),
:func:`deploy` runs it under ``inference.ray_app``, and :func:`main` is the command line behind
``python -m bot serve-ray`` (``bot/cli.py`` forwards the options after ``serve-ray`` here). Steps and
sizing: ``docs/scale-out-ray.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ray
from ray import serve

from bot.config import ConfigError, Settings, load_settings
from bot.inference.ray import DEPLOY_COMMAND
from bot.inference.ray.replica import InferenceDeployment
from bot.inference.ray.wire import HTTP_ROUTE_PREFIX

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

__all__ = ["build_app", "deploy", "main"]


def _without_secrets(settings: Settings) -> Settings:
    """Settings safe to ship to the cluster: Serve stores deployment arguments in Ray's GCS."""
    return settings.model_copy(update={"discord": settings.discord.model_copy(update={"token": None})})


def build_app(
    settings: Settings,
    *,
    autoscaling: tuple[int, int] | None = None,
    num_cpus: float = 1.0,
    crash_once_file: str | None = None,
) -> serve.Application:
    """The Serve application for ``settings``: replicas, GPUs per replica and batching from config.

    ``autoscaling=(min, max)`` replaces the fixed ``inference.ray_replicas`` with Serve's request-
    based autoscaler, aiming at one full batch (``queue.max_batch_size``) in flight per replica.
    ``max_ongoing_requests`` is two batches, so the next batch forms while one runs; beyond that,
    requests wait in the caller's handle, at most ``queue.max_queued`` of them (then QueueBusy).
    """
    batch = settings.queue.max_batch_size
    options: dict[str, Any] = {
        "ray_actor_options": {"num_gpus": settings.inference.ray_gpus_per_replica, "num_cpus": num_cpus},
        "max_ongoing_requests": 2 * batch,
        "max_queued_requests": settings.queue.max_queued,
    }
    if autoscaling is None:
        options["num_replicas"] = settings.inference.ray_replicas
    else:
        low, high = autoscaling
        options["autoscaling_config"] = {
            "min_replicas": low,
            "initial_replicas": max(low, min(settings.inference.ray_replicas, high)),
            "max_replicas": high,
            "target_ongoing_requests": batch,
        }
    return InferenceDeployment.options(**options).bind(_without_secrets(settings), crash_once_file)


def deploy(
    settings: Settings,
    *,
    route_prefix: str | None = None,
    autoscaling: tuple[int, int] | None = None,
    num_cpus: float = 1.0,
    crash_once_file: str | None = None,
) -> DeploymentHandle:
    """Deploy (or update in place) the app named ``inference.ray_app`` on the connected Ray cluster.

    Returns once every replica has loaded its models. ``route_prefix`` None: reachable through
    handles only (no HTTP route).
    """
    app = build_app(settings, autoscaling=autoscaling, num_cpus=num_cpus, crash_once_file=crash_once_file)
    return serve.run(app, name=settings.inference.ray_app, route_prefix=route_prefix)


# ---------------------------------------------------------------------------------------- command line


def _parse_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    try:
        bounds = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX, got {text!r}") from None
    if not 0 <= bounds[0] <= bounds[1] or bounds[1] < 1:
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX, MAX >= 1, got {text!r}")
    return bounds


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bot serve-ray --config PATH``: deploy the inference app on a Ray cluster."""
    parser = argparse.ArgumentParser(prog=DEPLOY_COMMAND, description=main.__doc__)
    parser.add_argument("--config", help="config file (default: $IMAGEBOT_CONFIG or ./config.toml)")
    parser.add_argument("--address", help="Ray cluster to join (default: inference.ray_address)")
    parser.add_argument("--autoscale", type=_parse_range, metavar="MIN:MAX",
                        help="autoscale between MIN and MAX replicas instead of inference.ray_replicas")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per replica (default 1)")
    parser.add_argument("--http-host", default="127.0.0.1", help="HTTP proxy address (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8100,
                        help="HTTP proxy port (default 8100: Chroma's server already defaults to 8000)")
    parser.add_argument("--no-http", action="store_true", help="handles only: no HTTP proxy, no route")
    parser.add_argument("--delete", action="store_true", help="remove the app instead of deploying it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    address = args.address or settings.inference.ray_address
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as exc:
        print(f"cannot join the Ray cluster at {address!r}: {exc}\n"
              "start one first: ray start --head --node-ip-address 127.0.0.1", file=sys.stderr)
        return 1
    app = settings.inference.ray_app
    if args.delete:
        serve.delete(app)
        print(f"deleted Serve app {app!r}")
        return 0
    if args.no_http:
        serve.start(proxy_location="Disabled")
    else:
        serve.start(proxy_location="HeadOnly", http_options={"host": args.http_host, "port": args.http_port})
    handle = deploy(settings, route_prefix=None if args.no_http else HTTP_ROUTE_PREFIX,
                    autoscaling=args.autoscale, num_cpus=args.num_cpus)
    info = handle.options(method_name="ready").remote().result(timeout_s=settings.queue.job_timeout_s)
    where = "handles only" if args.no_http else f"http://{args.http_host}:{args.http_port}{HTTP_ROUTE_PREFIX}"
    print(f"Serve app {app!r} running ({where}); a replica reports {info['model_ids']} on {info['device']}")
    return 0
