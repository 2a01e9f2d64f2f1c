"""Benchmarks (not tests): run as ``python -m bench.bench_roles`` / ``python -m bench.bench_queue``.

``OMP_WAIT_POLICY=PASSIVE`` is set here, before anything imports torch, unless the caller chose a
policy: with the default policy the OpenMP workers spin after every parallel region, and on a
machine whose 2 cores are shared with other work (this one, and any bot host running an event loop
and decode threads beside the models) a spinning worker that gets descheduled stalls every step of
caption decoding — measured at 5-20x slower per caption. bench_roles measures both policies.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
