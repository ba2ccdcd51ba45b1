"""medtune.training.run: the run folder, reloading the adapter, refusing to overwrite, --resume, 4-bit on CPU."""

import json
import logging

import pytest
import torch

from medtune import rundir, training
from medtune.errors import MedtuneError
from medtune.generate import answer, complete, encode_questions
from medtune.model import context_length


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("run") / "out"
    metrics = training.run(tiny_config(out, "train.max_steps=8"))
    return out, metrics


def test_run_writes_everything(run_dir):
    out, metrics = run_dir
    for f in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "config.yaml",
        "manifest.json",
        "metrics.json",
        "loss_curve.png",
        "splits/test.jsonl",
        "splits/validation.jsonl",
    ):
        assert (out / f).is_file(), f
    assert not list(out.glob(".staging-*")) and not list(out.glob("*.tmp"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["data"]["sha256"]) == 64 and manifest["packages"]["transformers"]
    assert manifest["data"]["splits"]["train"] > 0
    saved = json.loads((out / "metrics.json").read_text())
    assert any("tokens_per_second" in h for h in saved["log_history"])
    assert any("eval_loss" in h for h in saved["log_history"])
    assert metrics["train_tokens"] > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-6", "checkpoint-8"]  # keep-limit 2


def test_adapter_reloads_to_same_logits_and_generates(run_dir, tok, load_run):
    out, _ = run_dir
    model, tok2, cfg = load_run(out)
    ids = torch.tensor([tok2("Patient symptoms include fever and cough.")["input_ids"]])
    with torch.no_grad():
        tuned = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
    assert not torch.allclose(tuned, base)  # the adapter changed something
    model2, _, _ = load_run(out)
    with torch.no_grad():
        assert torch.allclose(model2(ids).logits, tuned, atol=1e-5)
    cfg.generate.max_new_tokens = 8
    cfg.generate.greedy = True
    r = answer(model, tok2, "What causes a fever?", cfg.data, cfg.generate)
    assert 0 < r["tokens"] <= 8 and isinstance(r["answer"], str)
    questions = ["A?", "What is asthma?"]
    single = [answer(model, tok2, q, cfg.data, cfg.generate)["answer"] for q in questions]
    prompts = encode_questions(tok2, questions, cfg.data, context_length(model), cfg.generate.max_new_tokens)
    assert [c.text for c in complete(model, tok2, prompts, cfg.generate)] == single


def test_refuses_to_overwrite_and_resumes(run_dir, tmp_path, tiny_config):
    out, _ = run_dir
    with pytest.raises(MedtuneError, match="already holds a run"):
        training.run(tiny_config(out))
    with pytest.raises(MedtuneError, match="--resume: output dir .* not found"):
        training.run(tiny_config(tmp_path / "fresh"), resume=True)
    assert not (tmp_path / "fresh").exists()


def test_prepare_output(run_dir, tmp_path, caplog):
    """The output folder is checked before anything is written: a run is never overwritten, --resume picks the
    newest complete checkpoint, and a folder without one starts over."""
    out, _ = run_dir
    assert rundir.RUN_FILES == ("adapter_config.json", "adapter_model.safetensors", "config.yaml", "manifest.json")
    assert rundir.prepare_output(tmp_path / "new", resume=False) is None
    (tmp_path / "empty").mkdir()
    assert rundir.prepare_output(tmp_path / "empty", resume=False) is None
    with pytest.raises(MedtuneError, match="already holds a run"):
        rundir.prepare_output(out, resume=False)
    assert rundir.prepare_output(out, resume=True) == out / "checkpoints" / "checkpoint-8"
    caplog.set_level(logging.INFO, logger="medtune.rundir")
    assert rundir.prepare_output(tmp_path / "empty", resume=True) is None  # starts over
    said = [r.getMessage() for r in caplog.records if r.name == "medtune.rundir"]
    assert len(said) == 1 and "starting over" in said[0]
    (tmp_path / "file").write_text("x")
    with pytest.raises(MedtuneError, match="not a folder"):
        rundir.prepare_output(tmp_path / "file", resume=False)


def test_resume_continues_from_last_checkpoint(tmp_path, tiny_config):
    out = tmp_path / "r"
    training.run(tiny_config(out, "train.max_steps=3", "train.save_steps=3"))
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    training.run(tiny_config(out, "train.max_steps=6", "train.save_steps=3"), resume=True)
    hist = json.loads((out / "metrics.json").read_text())["log_history"]
    steps = [h["step"] for h in hist if "loss" in h]
    # history carries over from the checkpoint; no step was trained (and logged) twice
    assert len(steps) == len(set(steps)) and max(steps) == 6
    eval_steps = [h["step"] for h in hist if "eval_loss" in h]
    assert eval_steps.count(0) == 1 and len(eval_steps) == len(set(eval_steps)), eval_steps  # step 0 evaluated once
    assert (out / "checkpoints" / "checkpoint-6").is_dir()


def test_4bit_on_cpu_train_evaluate_train(tmp_path, tiny_config, load_run):
    out = tmp_path / "q"
    cfg = tiny_config(out, "model.quantization=4bit", "train.max_steps=6", "train.eval_steps=2")
    metrics = training.run(cfg)  # evaluation at steps 2 and 4 between training steps
    hist = json.loads((out / "metrics.json").read_text())["log_history"]
    assert sum("eval_loss" in h for h in hist) >= 3 and torch.isfinite(torch.tensor(metrics["eval_loss"]))
    model, tok, cfg2 = load_run(out)
    assert cfg2.model.quantization == "4bit"
    cfg2.generate.max_new_tokens = 5
    assert answer(model, tok, "What is a cold?", cfg2.data, cfg2.generate)["tokens"] <= 5


@pytest.mark.parametrize("packing", [False, True])
def test_train_tokens_are_the_tokens_trained_on(tmp_path, tiny_config, packing):
    """One epoch sees every training example once: the token count equals the train split's tokens, whatever the
    evaluations (at step 0 and every 2 steps) and the data loader's prefetching push through the collator."""
    from medtune import data as data_mod
    from medtune import training
    from medtune.model import load_tokenizer

    cfg = tiny_config(
        tmp_path / "out",
        "train.max_steps=-1",
        "train.epochs=1",
        "train.eval_steps=2",
        "train.eval_on_start=true",
        "data.max_records=60",
        f"train.packing={str(packing).lower()}",
        *(["train.batch_tokens=512"] if packing else []),
    )
    metrics = training.run(cfg)
    prepared = data_mod.prepare(cfg.data, load_tokenizer("builtin:tiny"))
    assert metrics["train_tokens"] == sum(len(e["input_ids"]) for e in prepared.encoded["train"])
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["log_history"]
    assert sum("eval_loss" in h for h in history) >= 3  # the evaluations did run


def test_batch_tokens_one_entry_per_trained_batch(tmp_path, tiny_config):
    """The per-batch token list (what benchmarks/throughput.py divides by time) has one entry per batch trained on,
    and evaluation batches and prefetched batches never enter it, although they pass through the collator."""
    from medtune import data as data_mod
    from medtune import model as model_mod
    from medtune import training
    from medtune.batching import NUM_TOKENS

    cfg = tiny_config(tmp_path / "out", "train.max_steps=3", "train.eval_steps=1", "train.eval_on_start=true")
    tok = model_mod.load_tokenizer("builtin:tiny")
    prepared = data_mod.prepare(cfg.data, tok)
    model = model_mod.add_lora(model_mod.load_base_model(cfg.model, tok), cfg.model)
    trainer, collator, _ = training.make_trainer(cfg, model, tok, prepared, tmp_path / "out")
    collated: list[int] = []  # the real tokens of every batch the collator made

    def counting(features):
        batch = collator(features)
        collated.append(batch[NUM_TOKENS])
        return batch

    trainer.data_collator = counting
    trainer.train()
    assert len(trainer.batch_tokens) == trainer.state.global_step * cfg.train.grad_accum == 3
    assert all(0 < n <= cfg.train.batch_size * cfg.data.max_length for n in trainer.batch_tokens)
    assert sum(collated) > sum(trainer.batch_tokens)  # evaluations (and prefetching) went through it too


def test_a_memory_plan_checkpoints_only_its_layers(tok, monkeypatch):
    """apply_speedups turns checkpointing on for the plan's last k layers alone (selective checkpointing)."""
    from medtune.config import Config, ModelConfig
    from medtune.model import add_lora, load_base_model
    from medtune.training import memory
    from medtune.training import train as train_mod

    cfg = Config(model=ModelConfig(name="random:tiny", tokenizer="builtin:tiny"))
    model = add_lora(load_base_model(cfg.model, tok), cfg.model)
    plan = memory.MemoryPlan(chunk=256, static_gib=0.1, checkpointing=True, batch_tokens=1024, checkpoint_layers=1)
    monkeypatch.setattr(train_mod, "_memory_plan", lambda *a: plan)
    chosen = train_mod.apply_speedups(cfg, model)
    assert chosen.gradient_checkpointing and chosen.plan.checkpoint_layers == 1
    blocks = model.get_base_model().transformer.h
    assert [b.gradient_checkpointing for b in blocks] == [False, True]
