"""The README's air-gapped path end to end, as a user runs it: a model folder and a local data file, no hub (the
hub's address points at a closed local port, HF_HUB_OFFLINE unset: medtune finds out and tells the libraries).
audit -> train -> eval -> generate -> merge -> export -> serve, each a real `medtune` process."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

CLOSED_PORT_HUB = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once


@pytest.fixture
def offline(root):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = CLOSED_PORT_HUB

    def medtune(*args, timeout=300):
        p = subprocess.run(
            [sys.executable, "-m", "medtune", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=root,
            env=env,
        )
        assert p.returncode == 0, (args, p.stdout[-1500:], p.stderr[-1500:])
        assert "Traceback" not in p.stderr and "hub" not in p.stderr.lower(), p.stderr
        return p

    medtune.env = env
    return medtune


@pytest.fixture
def model_folder(tmp_path, tok):
    """A local model folder as `save_pretrained` writes it (a tiny GPT-2 with random weights and its tokenizer)."""
    from medtune.model import build_random

    folder = tmp_path / "models" / "tiny-gpt2"
    build_random("random:tiny", tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_air_gapped_path(tmp_path, root, offline, model_folder, make_records, write_jsonl):
    data = write_jsonl(tmp_path / "my_qa.jsonl", make_records(60))
    run, merged, gguf = tmp_path / "runs" / "local", tmp_path / "runs" / "local-merged", tmp_path / "local.gguf"
    audit = offline("data", "audit", data, "--model", model_folder, "--out", tmp_path / "audit")
    assert "split" in audit.stdout and (tmp_path / "audit" / "audit.json").is_file()
    quick = ["--set", "train.max_steps=2", "--set", "train.report_to=none", "--set", "eval.max_new_tokens=8"]
    offline(
        "train",
        "--config",
        root / "configs" / "gpt2-lora.yaml",
        "--model",
        model_folder,
        "--data",
        data,
        "--output-dir",
        run,
        *quick,
    )
    assert json.loads((run / "manifest.json").read_text())
    offline("eval", run, "--num-samples", 2)
    assert (run / "eval" / "report.md").is_file()
    g = offline("generate", run, "What causes a fever?", "--max-new-tokens", 4)
    assert "Not medical advice" in g.stdout
    offline("merge", run, "--out", merged)
    offline("export", run, "--format", "gguf", "--out", gguf, "--dtype", "q8_0")
    assert gguf.stat().st_size > 0
    serve = subprocess.Popen(
        [sys.executable, "-m", "medtune", "serve", str(merged), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
        env=offline.env,
    )
    try:
        line = serve.stdout.readline()  # medtune: serving NAME at http://127.0.0.1:PORT/ ...
        url = line.split(" at ", 1)[1].split()[0]
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "health", timeout=5) as r:
                    assert r.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline and serve.poll() is None, serve.stderr.read()
                time.sleep(0.5)
    finally:
        serve.terminate()
        serve.wait(timeout=30)
