"""Errors raised while locating or loading model weights."""

from __future__ import annotations


class ModelUnavailable(RuntimeError):
    """Weights for a configured model are not on this machine and may not be downloaded.

    The message names the model and says how to fetch it; callers print it as-is (no traceback).
    """

    def __init__(self, role: str, model_id: str, hint: str = "") -> None:
        self.role = role
        self.model_id = model_id
        advice = hint or (
            "run `python -m bot models download` on a machine with internet access "
            "(or copy its Hugging Face cache, ~/.cache/huggingface, to this one), "
            "or point the config at a local folder"
        )
        super().__init__(f"{role} model {model_id!r} is not available locally: {advice}")
