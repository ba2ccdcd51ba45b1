"""medtune merge: the merged folder loads with transformers.pipeline and computes what base + adapter computed."""

import pytest
import torch
import yaml

from medtune import rundir

TAGS = ["medtune", "lora", "merged", "medical"]


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run()


@pytest.fixture(scope="module")
def merged(run_dir, tmp_path_factory):
    from medtune.merge import merge

    out = tmp_path_factory.mktemp("merge") / "merged"
    merge(run_dir, out)
    return out


def front_matter(card: str) -> dict:
    """The model card's YAML front matter (between the first two `---` lines)."""
    assert card.startswith("---\n")
    head, sep, _ = card[4:].partition("\n---\n")
    assert sep, "no closing --- after the front matter"
    return yaml.safe_load(head)


def prompt_ids(tok, cfg, question="What are the symptoms of asthma?"):
    from medtune.generate import prompt_for

    return tok(prompt_for(question, cfg.data), return_tensors="pt", add_special_tokens=False)["input_ids"]


def test_merged_folder_contents(merged):
    names = {p.name for p in merged.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "config.yaml",
        "manifest.json",
        "metrics.json",
    } <= names
    assert not any(n.startswith(".staging") for n in names)
    assert not any(n.startswith("adapter") for n in names)  # standalone: no PEFT files
    for p in merged.iterdir():
        assert p.stat().st_mode & 0o044, f"{p.name} is not readable by others"


def test_model_card(merged):
    from medtune.notice import NOTICE

    card = (merged / "README.md").read_text()
    meta = front_matter(card)
    assert meta["pipeline_tag"] == "text-generation" and meta["library_name"] == "transformers"
    assert meta["tags"] == TAGS and "base_model" not in meta  # a random base is on no hub
    for needle in (
        "## Base model",
        "random:tiny",
        "## Data",
        "builtin:sample",
        "sha256",
        "## Recipe",
        "LoRA r=16",
        "## Metrics",
        "eval_loss",
        "## Intended use",
        "## Limits",
        "### Response:",
        NOTICE,
    ):
        assert needle in card, needle
    assert "unquantized" not in card  # only 4-bit runs get the note


def test_pipeline_loads_merged_and_logits_match_base_plus_adapter(run_dir, merged, load_run):
    from transformers import pipeline

    pipe = pipeline("text-generation", model=str(merged), device="cpu")
    ref, tok, cfg = load_run(run_dir, device="cpu")
    assert type(ref).__name__.startswith("Peft")  # the reference really is base + adapter
    ids = prompt_ids(tok, cfg)
    assert ids.tolist() == prompt_ids(pipe.tokenizer, cfg).tolist()  # same tokenizer
    with torch.no_grad():
        got, want = pipe.model(input_ids=ids).logits, ref(input_ids=ids).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the adapter changed something: the merged model is not just the base
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(run_dir / "base_model"))
    with torch.no_grad():
        assert (base(input_ids=ids).logits - want).abs().max() > 1e-3
    text = pipe("What is asthma?", max_new_tokens=5, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert isinstance(text, str)


def test_medtune_generate_on_merged_uses_run_template(run_dir, merged, capsys):
    from medtune.cli import main
    from medtune.rundir import open_run

    cfg_run = open_run(run_dir, want="run").config
    merged_run = open_run(merged)
    assert merged_run.kind == "merged"
    cfg_merged = merged_run.config
    assert cfg_merged.data.prompt_template == cfg_run.data.prompt_template
    assert cfg_merged.generate == cfg_run.generate
    assert main(["generate", str(merged), "What is asthma?", "--max-new-tokens", "4", "--greedy"]) == 0
    assert "Not medical advice" in capsys.readouterr().out


def table_rows(card: str) -> dict[str, list[str]]:
    """The card's Markdown table rows by first cell: {label: [the other cells, stripped]}."""
    rows = {}
    for line in card.splitlines():
        if line.startswith("| ") and line.endswith(" |"):
            cells = [c.strip() for c in line[1:-1].split("|")]
            rows[cells[0]] = cells[1:]
    return rows


EVAL_METRICS = {  # eval/metrics.json as `medtune eval` writes it (the keys the card's table reads)
    "base": {
        "loss": 8.25,
        "perplexity": 3900.0,
        "rouge_l": 0.01,
        "eos_rate": 0.0,
        "mean_answer_tokens": 12.5,
        "repeated_4gram_share": 0.5,
    },
    "tuned": {
        "loss": 6.5,
        "perplexity": 665.1,
        "rouge_l": 0.0625,
        "eos_rate": 0.4,
        "mean_answer_tokens": 40.0,
        "repeated_4gram_share": None,
    },
    "reference": {"mean_answer_tokens": 71.1},
    "data": {"source": "x.jsonl", "records": 21},
}


def test_model_card_shows_eval_table_and_4bit_note(tmp_path):
    import json

    from medtune.config import Config
    from medtune.modelcard import model_card

    (tmp_path / rundir.EVAL).mkdir()
    (tmp_path / rundir.EVAL / rundir.METRICS).write_text(json.dumps(EVAL_METRICS))
    cfg = Config()
    cfg.model.quantization = "4bit"
    card = model_card(tmp_path, cfg)
    rows = table_rows(card)
    assert rows["answer-token loss"] == ["8.2500", "6.5000", ""] and rows["EOS rate"] == ["0.0%", "40.0%", ""]
    assert rows["mean answer length (tokens)"] == ["12.5", "40.0", "71.1"]
    assert rows["repeated 4-grams"] == ["50.0%", "n/a", ""]
    assert "No metrics were recorded" in card  # no training metrics.json here
    assert front_matter(card)["base_model"] == "gpt2" and "reloaded unquantized" in card


def test_model_card_tolerates_eval_metrics_without_some_rows(tmp_path):
    import json

    from medtune.config import Config
    from medtune.modelcard import model_card

    partial = {
        side: {k: v for k, v in EVAL_METRICS[side].items() if k not in ("mean_answer_tokens", "repeated_4gram_share")}
        for side in ("base", "tuned")
    }
    (tmp_path / rundir.EVAL).mkdir()
    (tmp_path / rundir.EVAL / rundir.METRICS).write_text(json.dumps({**EVAL_METRICS, **partial}))
    rows = table_rows(model_card(tmp_path, Config()))
    assert rows["answer-token loss"] == ["8.2500", "6.5000", ""] and rows["EOS rate"] == ["0.0%", "40.0%", ""]
    assert rows["mean answer length (tokens)"][:2] == ["n/a", "n/a"]


def test_refuses_non_empty_out_and_non_runs(run_dir, merged, tmp_path):
    from medtune.errors import MedtuneError
    from medtune.merge import merge

    before = sorted((p.name, p.stat().st_mtime_ns) for p in merged.iterdir())
    with pytest.raises(MedtuneError, match="not empty"):
        merge(run_dir, merged)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in merged.iterdir()) == before
    with pytest.raises(MedtuneError, match=r"is a full model \(config.json, no adapter\)"):
        merge(merged, tmp_path / "again")
    with pytest.raises(MedtuneError, match="holds neither an adapter"):
        merge(tmp_path, tmp_path / "x")
    with pytest.raises(MedtuneError, match="folder not found"):
        merge(tmp_path / "missing", tmp_path / "y")
    with pytest.raises(MedtuneError, match="inside"):
        merge(run_dir, run_dir / "merged")
    assert not (run_dir / "merged").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no refused merge left a folder behind


def test_cli_merge_error_is_one_line(merged, capsys):
    from medtune.cli import main

    assert main(["merge", str(merged), "--out", str(merged.parent / "m2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medtune: error:") and "Traceback" not in err


def test_failed_merge_leaves_no_partial_files(run_dir, tmp_path, monkeypatch):
    import transformers

    from medtune.merge import merge

    def boom(self, *a, **k):
        (a[0] / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", boom)
    out = tmp_path / "merged"
    with pytest.raises(OSError, match="disk full"):
        merge(run_dir, out)
    assert not out.exists() or not any(out.iterdir())


def test_merged_folder_not_ready_for_serving_is_one_error_and_nothing_published(run_dir, tmp_path, monkeypatch, capsys):
    """After the merged folder is saved, what a serving engine (vLLM) reads is checked (medtune.deploy); a gap is one
    error line, and the folder is not published."""
    import transformers

    from medtune.cli import main

    save = transformers.PreTrainedModel.save_pretrained

    def without_generation_config(self, folder, *a, **k):
        save(self, folder, *a, **k)
        (folder / rundir.GENERATION_CONFIG).unlink()

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", without_generation_config)
    out = tmp_path / "merged"
    assert main(["merge", str(run_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "medtune: error: merge: the merged folder is not ready for a serving engine: " + rundir.GENERATION_CONFIG
    )
    assert not out.exists() or not any(out.iterdir())


def test_merge_4bit_run_reloads_base_unquantized(tmp_path_factory, tiny_run):
    pytest.importorskip("bitsandbytes")
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from medtune.config import from_dict
    from medtune.merge import merge
    from medtune.model import load_base_model, load_tokenizer

    run4 = tiny_run("tiny-run-4bit", "model.quantization=4bit", "train.max_steps=2")
    out = tmp_path_factory.mktemp("merge4") / "merged"
    merge(run4, out)
    card = (out / "README.md").read_text()
    assert "quantization during training: 4bit" in card and "reloaded unquantized" in card
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert not any("4bit" in type(m).__name__ for m in model.modules())
    cfg = from_dict(yaml.safe_load((run4 / "config.yaml").read_text()))
    tok = load_tokenizer(str(run4))
    ref = PeftModel.from_pretrained(
        load_base_model(cfg.model, tok, local_path=str(run4 / "base_model"), quantize=False), str(run4)
    ).eval()
    ids = prompt_ids(tok, cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
