"""The Ray Serve backend (``[inference] backend = "ray"``): the same analysis code, run as replicas.

What is where:

- :mod:`~bot.inference.ray.wire` — the wire format: the :class:`~bot.inference.ray.wire.Outcome`
  envelope, errors as data (:class:`~bot.inference.ray.wire.WireError`, rebuilt through a registry
  of the known types), the bytes of a decoded image, the HTTP door's JSON;
- :mod:`~bot.inference.ray.replica` — :class:`~bot.inference.ray.replica.InferenceDeployment`, the
  Serve deployment (one replica: the models behind ``@serve.batch``) and its HTTP door;
- :mod:`~bot.inference.ray.client` — :class:`~bot.inference.ray.client.RayInferenceClient`, what the
  bot uses: a complete :class:`~bot.inference.backend.InferenceBackend` over a deployment handle;
- :mod:`~bot.inference.ray.deploy` — building and deploying the app, and ``main(argv)``, which
  ``python -m bot serve-ray --config PATH`` runs (``docs/scale-out-ray.md``).

Nothing is imported here, so ``import bot.inference.ray`` alone does not import Ray (``ray[serve]``,
the optional ``ray`` extra); every module but ``wire`` does.
"""

#: The one deploy command (the CLI's ``prog`` and what a bot says when the app is missing).
DEPLOY_COMMAND = "python -m bot serve-ray"
