"""ASGI middleware around the app: API-key auth and Prometheus metrics (pure ASGI, so streaming passes through)."""

from __future__ import annotations

import hmac
import time
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.responses import JSONResponse, RedirectResponse, Response

from medtune.serving.schemas import error_body

OPEN_PATHS = {"/health"}
GENERATING = {"/v1/completions", "/v1/chat/completions"}
PATHS = {"/", "/health", "/v1/models"} | GENERATING  # metrics by path; any other is counted as "other"
COOKIE = "medtune_key"


class ApiKeyAuth:
    """Every route but /health needs the key: `Authorization: Bearer KEY`, or (for the web page) the cookie that
    opening `/?key=KEY` sets (HttpOnly, SameSite=Strict; the redirect drops the key from the address bar).
    A missing or wrong key is a 401 without detail."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    def __getattr__(self, name):  # the wrapped app's attributes (e.g. .state) stay reachable
        return getattr(self.app, name)

    def _ok(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.key)

    def _presented(self, scope) -> str | None:
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        cookie = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        return cookie[COOKIE].value if COOKIE in cookie else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if scope["path"] == "/" and "key" in parse_qs(scope.get("query_string", b"").decode("latin-1")):
            given = parse_qs(scope["query_string"].decode("latin-1"))["key"][0]
            if self._ok(given):
                response: Response = RedirectResponse("/", status_code=303)
                response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
                return await response(scope, receive, send)
        if not self._ok(self._presented(scope)):
            response = JSONResponse(
                error_body("unauthorized", "authentication_error"),
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class Metrics:
    """Prometheus metrics at /metrics (prometheus-client, a registry of this app's own): requests by route and
    status, request latency, generated tokens, queue depth, running requests, decoding steps, rejected (429)
    requests."""

    def __init__(self, app, engine):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.app, self.registry = app, CollectorRegistry()
        self.requests = Counter("medtune_requests", "HTTP requests", ["path", "status"], registry=self.registry)
        self.latency = Histogram(
            "medtune_request_seconds",
            "time to the last byte of a completion",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.rejected = Counter(
            "medtune_rejected", "requests refused because the queue was full", registry=self.registry
        )
        Gauge("medtune_queue_depth", "requests queued or running", registry=self.registry).set_function(
            lambda: engine.pending
        )
        Gauge("medtune_running_requests", "requests in the running batch", registry=self.registry).set_function(
            lambda: engine.running
        )
        for name, doc, attr in (
            ("medtune_generated_tokens_total", "completion tokens generated", "generated_tokens"),
            ("medtune_decode_steps_total", "decoding steps (one token for every running request)", "decode_steps"),
        ):
            self._engine_counter(name, doc, engine, attr)

    def __getattr__(self, name):
        return getattr(self.app, name)

    def _engine_counter(self, name, doc, engine, attr):
        from prometheus_client.core import CounterMetricFamily

        class Collect:
            def collect(self):
                yield CounterMetricFamily(name.removesuffix("_total"), doc, value=getattr(engine, attr))

        self.registry.register(Collect())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
            from starlette.responses import Response

            return await Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def watch(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            path = scope["path"] if scope["path"] in PATHS else "other"
            self.requests.labels(path, str(status[0])).inc()
            if status[0] == 429:
                self.rejected.inc()
            if path in GENERATING and status[0] == 200:
                self.latency.observe(time.perf_counter() - start)
