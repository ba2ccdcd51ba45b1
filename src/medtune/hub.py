"""Fail fast, in one line, when a hub id is needed and the Hugging Face hub cannot be reached."""

from __future__ import annotations

import functools
import os
import socket
import sys
from urllib.parse import urlparse

from medtune.errors import MedtuneError


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def require_hub(name: str, what: str) -> None:
    """Raise a clear error if `name` (a hub id, not a local path) cannot be fetched."""
    if not hub_reachable():
        raise MedtuneError(
            f"cannot download {what} '{name}': the Hugging Face hub is unreachable (offline?) "
            "and it is not in the local cache; pass a local path instead"
        )


settled: list[bool] = []  # [True] once settle_offline set HF_HUB_OFFLINE (medtune env says who set it)


def settle_offline() -> None:
    """Where the hub cannot be reached, tell the libraries so the way they are meant to be told: HF_HUB_OFFLINE=1
    (huggingface_hub reads it when imported; set here before that, and in its constants should it be loaded
    already). They then use their local caches without trying the network, and without waiting for time-outs. A
    value the user set is kept."""
    if "HF_HUB_OFFLINE" in os.environ or hub_reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    settled.append(True)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        setattr(constants, "HF_HUB_OFFLINE", True)  # noqa: B010 (a module found at run time)
