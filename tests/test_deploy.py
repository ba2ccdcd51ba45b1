"""medtune.deploy.check_serving_folder: what vLLM reads from a merged folder (config.json with architectures, the
tokenizer files, generation_config.json, safetensors weights, no custom code) is all there, or each gap is named.
`medtune merge` runs it on every merged folder before publishing it (tests/test_merge.py)."""

import json
import shutil

import pytest
from tiny_llama import chat_tokenizer, make_llama

from medtune import rundir
from medtune.deploy import check_serving_folder


@pytest.fixture(scope="module")
def ready(tmp_path_factory, tok):
    """A merged-style GPT-2 folder as save_pretrained writes it (plus medtune's own extra files)."""
    from medtune.model import build_random

    folder = tmp_path_factory.mktemp("serving") / "merged"
    model = build_random("random:tiny", tok)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / rundir.CONFIG).write_text("data:\n  prompt_format: template\n")
    (folder / rundir.MODEL_CARD).write_text("# merged\n")
    return folder


def broken_copy(ready, tmp_path, name="broken"):
    folder = tmp_path / name
    shutil.copytree(ready, folder)
    return folder


def test_complete_folder_is_ready(ready):
    assert check_serving_folder(ready) == []
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    } <= {p.name for p in ready.iterdir()}


def test_chat_endpoint_needs_a_chat_template(ready, tmp_path):
    assert check_serving_folder(ready, chat=True) == [
        "chat template (tokenizer_config.json chat_template or chat_template.jinja)"
    ]
    tok = chat_tokenizer()
    folder = tmp_path / "chat"
    make_llama(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    assert check_serving_folder(folder, chat=True) == []


def test_broken_folder_lists_every_gap(ready, tmp_path):
    folder = broken_copy(ready, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_medgpt.MedGPT"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_medgpt.py").write_text("class MedGPT: ...\n")
    (folder / "generation_config.json").unlink()
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    problems = check_serving_folder(folder)
    assert problems == [
        'config.json: architectures (the model class, e.g. ["GPT2LMHeadModel"])',
        "no custom code: config.json has auto_map (needs --trust-remote-code)",
        "tokenizer: tokenizer.json (or vocab.json + merges.txt, or tokenizer.model)",
        "tokenizer_config.json",
        "generation_config.json",
        "weights: *.safetensors (found only pytorch_model.bin)",
        "no custom code: modeling_medgpt.py",
    ]


def test_slow_gpt2_tokenizer_files_count(ready, tmp_path):
    """GPT-2's vocab.json + merges.txt (the slow tokenizer's files) are enough without tokenizer.json."""
    folder = broken_copy(ready, tmp_path)
    (folder / "tokenizer.json").unlink()
    assert check_serving_folder(folder) == [
        "tokenizer: tokenizer.json (or vocab.json + merges.txt, or tokenizer.model)"
    ]
    (folder / "vocab.json").write_text("{}")
    (folder / "merges.txt").write_text("#version: 0.2\n")
    assert check_serving_folder(folder) == []


def test_sharded_weights_must_all_be_there(tmp_path):
    tok = chat_tokenizer()
    folder = tmp_path / "sharded"
    make_llama(tok).save_pretrained(folder, max_shard_size="100KB")
    tok.save_pretrained(folder)
    assert check_serving_folder(folder) == []
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    assert check_serving_folder(folder) == [f"weights: {shard.name} (named in model.safetensors.index.json)"]


def test_unreadable_json_and_missing_folder(ready, tmp_path):
    folder = broken_copy(ready, tmp_path)
    (folder / "config.json").write_text("{not json")
    (folder / "generation_config.json").write_text("[]")
    assert check_serving_folder(folder) == ["config.json: not valid JSON", "generation_config.json: not valid JSON"]
    assert check_serving_folder(tmp_path / "nope") == [f"model folder: {tmp_path / 'nope'} is not a folder"]
    assert check_serving_folder(folder / "config.json")[0].startswith("model folder:")
