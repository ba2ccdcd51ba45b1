"""Bounded load benchmark for `medtune serve` (not a timed test).

Starts `medtune serve` on a free loopback port in a subprocess, sends N completion requests with C in flight
at once (a mix of plain and streamed ones), and prints errors (must be 0) and latency percentiles.
Loopback only; nothing else is contacted.

  python benchmarks/load.py                         # trains the tiny preset (a few steps) into a temp dir first
  python benchmarks/load.py --model-dir runs/tiny-cpu --requests 200 --concurrency 1,8,32 --max-batch-size 1,16
Prints a table: requests/s, p50 and p95 latency, tokens/s for each server --max-batch-size and client count.
Exit status: 0 when every request succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "What is asthma?",
    "What are the symptoms of type 2 diabetes?",
    "How is high blood pressure treated?",
    "What causes migraines?",
    "When should a fever be checked by a doctor?",
    "What is anemia?",
    "How does the flu spread?",
    "What are the risk factors for stroke?",
]


def train_tiny(out: Path) -> None:
    print(f"training the tiny preset into {out} ...", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "medtune",
            "train",
            "--config",
            str(ROOT / "configs" / "tiny-cpu.yaml"),
            "--output-dir",
            str(out),
            "--set",
            "train.max_steps=20",
            "--set",
            "train.report_to=none",
            "--set",
            "train.save_steps=1000",
            "--set",
            "train.eval_steps=1000",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )


def start_server(model_dir: Path, queue_size: int, max_batch_size: int, worker: str = "auto"):
    code = (
        "import sys; from medtune.serving.server import serve; "
        f"serve(sys.argv[1], host='127.0.0.1', port=0, log_level='warning', queue_size={queue_size}, "
        f"max_batch_size={max_batch_size}, worker={worker!r})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(model_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    deadline = time.time() + 300
    for line in proc.stdout:
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if m:
            return proc, int(m.group(1))
        if time.time() > deadline:
            break
    proc.kill()
    raise SystemExit("the server did not start")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


async def one(client, i: int, args) -> tuple[bool, float, float | None, int, str]:
    """Returns ok, latency, time to first token (streamed only), completion tokens, error text."""
    lo, hi = args.max_tokens
    body = {"prompt": QUESTIONS[i % len(QUESTIONS)], "max_tokens": lo + (i * 7919) % (hi - lo + 1), "seed": i}
    stream = args.stream_every > 0 and i % args.stream_every == 0
    t0 = time.perf_counter()
    try:
        if not stream:
            r = await client.post("/v1/completions", json=body)
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                return False, dt, None, 0, f"HTTP {r.status_code}: {r.text[:200]}"
            data = r.json()
            ok = isinstance(data["choices"][0]["text"], str) and "notice" in data
            return ok, dt, None, data["usage"]["completion_tokens"], "" if ok else "bad body"
        ttft, done, tokens = None, False, 0
        async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            if r.status_code != 200:
                return False, time.perf_counter() - t0, None, 0, f"HTTP {r.status_code}"
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                obj = json.loads(line[6:])
                if "error" in obj:
                    return False, time.perf_counter() - t0, None, 0, obj["error"]["message"]
                if ttft is None and obj["choices"][0]["text"]:
                    ttft = time.perf_counter() - t0
                if obj.get("usage"):
                    tokens = obj["usage"]["completion_tokens"]
        return done, time.perf_counter() - t0, ttft, tokens, "" if done else "stream ended without [DONE]"
    except Exception as e:  # a dropped connection, a timeout
        return False, time.perf_counter() - t0, None, 0, f"{type(e).__name__}: {e}"


async def run_load(port: int, args, part: int = 0, parts: int = 1) -> list[tuple]:
    """Requests part, part + parts, ... with args.concurrency // parts clients (one client process's share)."""
    import httpx

    clients = max(1, args.concurrency // parts)
    sem = asyncio.Semaphore(clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=args.timeout, limits=limits) as client:
        await one(client, 0, argparse.Namespace(**{**vars(args), "max_tokens": (2, 2)}))  # warm-up, not counted

        async def bounded(i):
            async with sem:
                return await one(client, i, args)

        return await asyncio.gather(*(bounded(i) for i in range(part, args.requests, parts)))


def _load_part(job) -> list[tuple]:
    port, args, part, parts, start = job
    time.sleep(max(0.0, start - time.time()))  # every client process starts at once
    return asyncio.run(run_load(port, args, part, parts))


def load(port: int, args) -> tuple[list[tuple], float]:
    """Results of every request and the wall time, with the clients spread over args.client_processes processes
    (one Python process of 128 asyncio clients can itself be what limits a fast server)."""
    n = min(args.client_processes, args.concurrency)
    if n <= 1:
        t0 = time.perf_counter()
        results = asyncio.run(run_load(port, args))
        return results, time.perf_counter() - t0
    import multiprocessing

    start = time.time() + 2.0  # after the processes have imported httpx
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        parts = pool.map(_load_part, [(port, args, k, n, start) for k in range(n)])
    return [r for part in parts for r in part], time.time() - start


def summarize(results: list[tuple], wall: float) -> dict:
    lat = [r[1] * 1000 for r in results]
    ttft = [r[2] * 1000 for r in results if r[0] and r[2] is not None]
    errors = [r[4] for r in results if not r[0]]
    tokens = sum(r[3] for r in results if r[0])
    return {
        "errors": errors,
        "p50": pct(lat, 50),
        "p95": pct(lat, 95),
        "ttft_p50": pct(ttft, 50) if ttft else None,
        "rps": len(results) / wall,
        "tps": tokens / wall,
        "wall": wall,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, help="a run or merged folder (default: train the tiny preset)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", default="1,8,32", help="clients in flight at once; a comma list runs each")
    ap.add_argument("--max-batch-size", default="1,128", help="server --max-batch-size; a comma list runs each")
    ap.add_argument("--max-tokens", default="16-64", help="each request asks for LO-HI new tokens (spread evenly)")
    ap.add_argument("--stream-every", type=int, default=4, help="every Nth request streams (0: none)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per-request client timeout, seconds")
    ap.add_argument("--worker", default="auto", help="server --worker (auto, process, thread); a comma list runs each")
    ap.add_argument("--client-processes", type=int, default=1, help="spread the clients over this many processes")
    args = ap.parse_args()
    lo, _, hi = args.max_tokens.partition("-")
    args.max_tokens = (int(lo), int(hi or lo))

    tmp = None
    model_dir = args.model_dir
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="medtune-load-")
        model_dir = Path(tmp.name) / "run"
        train_tiny(model_dir)
    print(
        f"{args.requests} requests each, max_tokens {lo}-{hi or lo}, every {args.stream_every}th streamed, "
        f"model {model_dir.name}\n"
    )
    print("| --max-batch-size | --worker | clients | requests/s | p50 ms | p95 ms | tokens/s | errors |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    failed = False
    runs = [(int(b), w) for b in args.max_batch_size.split(",") for w in args.worker.split(",")]
    try:
        for batch, worker in runs:
            proc, port = start_server(model_dir, queue_size=max(64, args.requests), max_batch_size=batch, worker=worker)
            try:
                for clients in [int(c) for c in args.concurrency.split(",")]:
                    results, wall = load(port, argparse.Namespace(**{**vars(args), "concurrency": clients}))
                    r = summarize(results, wall)
                    failed |= bool(r["errors"])
                    print(
                        f"| {batch} | {worker} | {clients} | {r['rps']:.2f} | {r['p50']:.0f} | {r['p95']:.0f} | "
                        f"{r['tps']:.0f} | {len(r['errors'])} |",
                        flush=True,
                    )
                    for e in sorted(set(r["errors"]))[:3]:
                        print(f"  {r['errors'].count(e)} x {e}")
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
