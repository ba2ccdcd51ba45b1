"""`medtune serve`: bind the socket first (a busy port fails before the model loads), then run uvicorn."""

from __future__ import annotations

import socket
from pathlib import Path

from medtune.errors import MedtuneError
from medtune.notice import NOTICE
from medtune.serving.app import create_app
from medtune.serving.engine import EngineClient, Limits
from medtune.validate import validate_serve_limits

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise MedtuneError(f"cannot resolve host '{host}': {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)  # uvicorn's own default: many clients connecting at once must not overflow the accept queue
    except OSError as e:
        sock.close()
        raise MedtuneError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def serve(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    api_key: str | None = None,
    insecure: bool = False,
    **limits,
) -> None:
    """Load the model, bind host:port (127.0.0.1 by default), and serve until Ctrl+C. A non-loopback address needs
    an API key (or insecure=True)."""
    import uvicorn

    lim = Limits(**{k: v for k, v in limits.items() if v is not None})
    validate_serve_limits(lim)
    loopback = host in LOOPBACK or host.startswith("127.")
    if not loopback and not api_key and not insecure:
        raise MedtuneError(
            f"--host {host} is reachable from other machines: set an API key (--api-key or "
            "MEDTUNE_API_KEY), or pass --insecure to serve without one"
        )
    sock = listen(host, port)  # first: a busy port fails at once, before the model loads
    try:
        engine = EngineClient(model_dir, lim)
    except BaseException:
        sock.close()
        raise
    app = create_app(engine=engine, allowed_hosts=(LOOPBACK | {host}) if loopback else {"*"}, api_key=api_key)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"medtune: serving {engine.name} at http://{shown}:{bound}/  (API: POST /v1/chat/completions and "
        "/v1/completions; Ctrl+C stops)",
        flush=True,
    )
    if not loopback and not api_key:
        print(
            f"medtune: warning: listening on {host} without an API key (--insecure): anyone who can reach this "
            "port can use it",
            flush=True,
        )
    if api_key:
        print(
            f"medtune: API key required (Authorization: Bearer ...); web page: http://{shown}:{bound}/?key=KEY",
            flush=True,
        )
    print(NOTICE, flush=True)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3, timeout_keep_alive=lim.keep_alive_s)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        engine.close()
        sock.close()
