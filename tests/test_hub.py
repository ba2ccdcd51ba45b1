"""medtune.hub: offline (HF_HUB_OFFLINE) or an unreachable endpoint is known without a download attempt, and a hub id
that is needed then is one clear error."""

import socket

import pytest

from medtune import hub
from medtune.errors import MedtuneError


@pytest.fixture(autouse=True)
def fresh_cache():
    hub.hub_reachable.cache_clear()
    yield
    hub.hub_reachable.cache_clear()


def test_offline_is_unreachable_and_require_hub_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_reachable() is False
    with pytest.raises(MedtuneError, match=r"cannot download model 'gpt2': the Hugging Face hub is unreachable"):
        hub.require_hub("gpt2", "model")


def test_endpoint_that_refuses_connections_is_unreachable(monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert hub.hub_reachable(timeout=1.0) is False


def test_endpoint_that_listens_is_reachable(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{s.getsockname()[1]}")
        assert hub.hub_reachable(timeout=1.0) is True
        hub.require_hub("gpt2", "model")  # no error
