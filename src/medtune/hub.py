"""Fail fast, in one line, when a hub id is needed and the Hugging Face hub cannot be reached."""

from __future__ import annotations

import functools
import os
import socket
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
