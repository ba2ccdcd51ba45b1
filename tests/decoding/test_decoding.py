"""The decoding engine (medtune.decoding): the same tokens as transformers' model.generate, answers that depend on
their prompt and seed alone, continuous batching (more prompts than rows, rows joining and leaving), the loop guard
and streamed text."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from medtune.config import GenerateConfig


def _gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=64, n_layer=2, n_head=4)).eval()


def _llama(tok):  # grouped-query attention (4 query heads, 2 key/value heads), rotary positions
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
    ).eval()


def _gemma2(tok):  # attention logit soft-capping, and a sliding window shorter than prompt + answer
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    return Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=8,
            max_position_embeddings=256,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=None,
            attn_implementation="eager",
        )
    ).eval()


QUESTIONS = [
    "What is asthma and how is it treated?",
    "Fever?",
    "How long does a cold last in adults and in children, usually?",
    "Gout?",
    "What causes migraines?",
]


def _prompts(tok):
    return [tok(q, add_special_tokens=False)["input_ids"] for q in QUESTIONS]


def _hf(model, tok, prompt, n, **kw):
    if model.config.model_type == "gemma2":
        model.set_attn_implementation("eager")  # transformers' reference path for soft-capping
    out = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **kw,
    )[0, len(prompt) :].tolist()
    return out[: out.index(tok.eos_token_id)] if tok.eos_token_id in out else out


@pytest.mark.parametrize("arch", [_gpt2, _llama, _gemma2])
@pytest.mark.parametrize("penalties", [{}, {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3}])
def test_greedy_tokens_equal_model_generate(tok, arch, penalties):
    """Slot attention, per-row positions and the penalties reproduce model.generate token for token, with fewer
    rows than prompts (rows leave and new prompts join the running batch)."""
    from medtune.generate import complete

    model = arch(tok)
    g = GenerateConfig(
        max_new_tokens=20,
        greedy=True,
        loop_guard=0,
        repetition_penalty=penalties.get("repetition_penalty", 1.0),
        no_repeat_ngram=penalties.get("no_repeat_ngram_size", 0),
    )
    prompts = _prompts(tok)
    got = complete(model, tok, prompts, dataclasses.replace(g), batch_size=2)
    for p, c in zip(prompts, got):
        assert c.token_ids == _hf(model, tok, p, 20, **penalties)
        assert c.stop_reason in ("eos", "length") and c.prompt_tokens == len(p)


def test_sampled_answers_depend_on_prompt_and_seed_alone(tok):
    """The same answer alone, in a batch, or joining a batch mid-way (one row: prompts wait for each other)."""
    from medtune.generate import complete

    model = _llama(tok)
    g = GenerateConfig(max_new_tokens=15, temperature=1.0, top_p=0.9, top_k=20, seed=5, loop_guard=0)
    prompts = _prompts(tok)
    together = [c.token_ids for c in complete(model, tok, prompts, g, batch_size=5)]
    assert [c.token_ids for c in complete(model, tok, prompts, g, batch_size=2)] == together
    assert [complete(model, tok, [p], g)[0].token_ids for p in prompts] == together
    other = [c.token_ids for c in complete(model, tok, prompts, dataclasses.replace(g, seed=6), batch_size=5)]
    assert other != together


class _HostTensors(TorchDispatchMode):
    """Records tensors made from host data (`torch.tensor(...)`, or the number in `t[rows] = 0`): on a GPU each is a
    host-to-device copy, which fails inside CUDA-graph capture."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _fake_graphs(monkeypatch, around=None):
    """CUDA graphs on the CPU: each "capture" keeps the function and each replay calls it (inside `around`, a
    context manager, when given), so the graph path's buffers, buckets and keys run as on a GPU."""
    from medtune.decoding.runner import ModelRunner

    def replay(fn):
        with around or contextlib.nullcontext():
            fn()

    monkeypatch.setattr(
        ModelRunner,
        "_capture",
        lambda self, fn: (type("G", (), {"replay": staticmethod(lambda: replay(fn))}), None),
    )


def test_the_shapes_cuda_graphs_run_give_the_same_answers(tok, monkeypatch):
    """The graph path (prompts prefilled in buckets padded to a power of 2 of rows and 64-token widths through the
    static input buffers, first tokens sampled inside the prefill, settings gathered by slot) answers as the plain
    path does, with rows of different settings joining and leaving. On the CPU each "graph" replays its function."""
    from medtune.decoding import Request
    from medtune.generate import complete, make_engine

    model = _llama(tok)
    prompts = _prompts(tok)
    gs = [
        GenerateConfig(
            max_new_tokens=6 + 3 * i,
            temperature=0.7 + 0.2 * i,
            top_p=0.9,
            top_k=5 * i,
            seed=i,
            loop_guard=0,
            repetition_penalty=1.0 + 0.1 * (i % 2),
            no_repeat_ngram=2 * (i == 3),
        )
        for i in range(len(prompts))
    ]

    def answers(engine):
        first = engine.run([Request(p, g) for p, g in list(zip(prompts, gs))[:3]])  # 3 rows in a 4-row bucket
        return [c.token_ids for c in first + engine.run([Request(p, g) for p, g in zip(prompts, gs)])]

    plain = answers(make_engine(model, tok, 4, 64))
    scalars = _HostTensors()
    _fake_graphs(monkeypatch, around=scalars)
    graphed = make_engine(model, tok, 4, 64)
    graphed.runner.use_graphs = True
    assert answers(graphed) == plain
    assert not scalars.ops  # e.g. `t[rows] = 0`: a host-to-device copy, which a CUDA graph cannot capture
    assert {k[:2] for k in graphed.runner.graphs if k[0] == "prefill"} >= {("prefill", 4), ("prefill", 1)}
    alone = [complete(model, tok, [p], g)[0].token_ids for p, g in zip(prompts, gs)]
    assert plain[3:] == alone


def test_a_bucket_that_overhangs_the_last_slot_still_prefills_in_its_graph(tok, monkeypatch):
    """One row runs in a 4-slot engine and 3 requests join at once: their 4-row prefill bucket overhangs the last
    slot, and its padding row writes to the scratch slot, so the prefill runs as a graph (before: eagerly, hundreds
    of launches on a GPU, whenever a nearly full engine admitted). The answers are those of each request alone."""
    from medtune.decoding import Request
    from medtune.generate import make_engine

    model = _llama(tok)
    prompts = _prompts(tok)
    gs = [GenerateConfig(max_new_tokens=12 - 2 * i, temperature=0.8, seed=i, loop_guard=0) for i in range(4)]
    _fake_graphs(monkeypatch)
    engine = make_engine(model, tok, 4, 64)
    engine.runner.use_graphs = True
    engine.eos = -1
    done = {}
    engine.add(Request(prompts[0], gs[0], on_done=lambda c: done.setdefault(0, c.token_ids)))
    engine.step()
    engine.step()
    for i in (1, 2, 3):
        engine.add(Request(prompts[i], gs[i], on_done=lambda c, i=i: done.setdefault(i, c.token_ids)))
    while len(done) < 4:
        engine.step()
    assert sorted(k[1] for k in engine.runner.graphs if k[0] == "prefill") == [1, 4]  # rows 1..3 in a 4-row bucket
    alone = []
    for p, g in zip(prompts, gs):
        solo = make_engine(model, tok, 1, 64)
        solo.eos = -1
        alone.append(solo.run([Request(p, g)])[0].token_ids)
    assert [done[i] for i in range(4)] == alone and [len(a) for a in alone] == [12, 10, 8, 6]


def test_more_prompts_than_a_prefill_graph_holds_join_in_groups(tok, monkeypatch):
    """With prefill graphs of up to 2 rows, 4 prompts joining at once are prefilled as two 2-row graphs (not one
    eager prefill), and each answer is the one it gets alone."""
    from medtune.decoding import Request, scheduler
    from medtune.generate import make_engine

    model = _llama(tok)
    prompts = _prompts(tok)
    gs = [GenerateConfig(max_new_tokens=5 + i, temperature=0.8, seed=i, loop_guard=0) for i in range(4)]
    monkeypatch.setattr(scheduler, "PREFILL_GRAPH_ROWS", 2)
    _fake_graphs(monkeypatch)
    engine = make_engine(model, tok, 4, 64)
    engine.runner.use_graphs = True
    prefills = []
    step = engine.runner._prefill_step
    monkeypatch.setattr(engine.runner, "_prefill_step", lambda *a: (prefills.append(a[0].shape[0]), step(*a))[1])
    together = [c.token_ids for c in engine.run([Request(p, g) for p, g in zip(prompts, gs)])]
    assert prefills == [2, 2] and {k[1] for k in engine.runner.graphs if k[0] == "prefill"} == {2}
    alone = [make_engine(model, tok, 1, 64).run([Request(p, g)])[0].token_ids for p, g in zip(prompts, gs)]
    assert together == alone


def test_warm_up_captures_every_batch_bucket_and_leaves_the_engine_as_new(tok, monkeypatch):
    """Engine.warm_up (what `medtune serve` runs before serving): a decode graph for every batch bucket at the first
    two widths, prefill graphs; afterwards no row, no counter, and answers are those of a fresh engine."""
    from medtune.decoding import Request
    from medtune.generate import make_engine

    model = _llama(tok)
    prompts = _prompts(tok)
    g = GenerateConfig(max_new_tokens=8, temperature=0.8, seed=3)
    fresh = [c.token_ids for c in make_engine(model, tok, 4, 300).run([Request(p, g) for p in prompts])]
    _fake_graphs(monkeypatch)
    engine = make_engine(model, tok, 4, 300)
    assert engine.warm_up(g) == 0  # no graphs (CPU): nothing to do
    engine.runner.use_graphs = True
    assert engine.warm_up(g) == len(engine.runner.graphs) > 0
    decode = {k[1:3] for k in engine.runner.graphs if k[0] == "decode"}
    assert {(b, w) for b in (1, 2, 4) for w in (128, 256)} <= decode
    assert {k[1] for k in engine.runner.graphs if k[0] == "prefill"} == {1, 2, 4}
    assert engine.pending == 0 and engine.steps_run == 0 and engine.eos == tok.eos_token_id
    assert [c.token_ids for c in engine.run([Request(p, g) for p in prompts])] == fresh


def test_sampling_limits(tok):
    """top_k=1, a tiny top_p and a min_p near 1 each leave only the most likely token: greedy decoding."""
    from medtune.generate import complete

    model = _gpt2(tok)
    prompts = _prompts(tok)[:3]
    base = GenerateConfig(
        max_new_tokens=10, temperature=1.5, top_k=0, top_p=1.0, seed=1, loop_guard=0, repetition_penalty=1.0
    )
    greedy = [c.token_ids for c in complete(model, tok, prompts, dataclasses.replace(base, greedy=True))]
    for kw in ({"top_k": 1}, {"top_p": 1e-6}, {"min_p": 0.999}):
        assert [c.token_ids for c in complete(model, tok, prompts, dataclasses.replace(base, **kw))] == greedy
    sampled = [c.token_ids for c in complete(model, tok, prompts, base)]
    assert sampled != greedy


def test_uniform_numbers_are_per_seed_and_step():
    from medtune.decoding.sampling import uniform

    seed = torch.arange(4096, dtype=torch.long) * 7919
    step = torch.arange(4096, dtype=torch.long) % 97
    u = uniform(seed, step)
    assert torch.equal(u[100:200], uniform(seed[100:200], step[100:200]))  # a row's number ignores the others
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float((u < 0.1).float().mean()) - 0.1) < 0.02
    assert len(set(uniform(torch.full((64,), 3), torch.arange(64)).tolist())) == 64


def test_loop_guard_cuts_the_repetition():
    from medtune.decoding.rows import LoopGuard

    guard, tokens, cut = LoopGuard(16), [], None
    for t in [9, 8] + [1, 2, 3, 4, 5] * 10:
        tokens.append(t)
        cut = guard.add(tokens)
        if cut is not None:
            break
    assert tokens[:cut] == [9, 8, 1, 2, 3, 4, 5] and len(tokens) < 30
    # a phrase repeated with one word changing each time loops too: cut before its first copy
    guard, tokens, cut = LoopGuard(32), [], None
    for i in range(40):
        tokens.extend([1, 2, 3, 4, 5, 6, 7, 100 + i])
        for j in range(len(tokens) - 8, len(tokens)):
            cut = guard.add(tokens[: j + 1]) if cut is None else cut
    assert cut == 8 and len(tokens) >= 8
    plain = LoopGuard(16)
    assert all(plain.add(list(range(n))) is None for n in range(1, 200))
    assert LoopGuard(0).add([1] * 50) is None


def test_engine_stops_a_looping_answer_and_streams_what_it_keeps(tok):
    """A model forced to loop is cut to one copy of the repeated text, and the streamed text is the answer."""
    from medtune.generate import complete

    model = _gpt2(tok)
    cycle = tok(" the lungs and the heart", add_special_tokens=False)["input_ids"]
    assert len(cycle) >= 2
    head = model.get_output_embeddings()
    state = {"n": 0}

    def force(module, args, out):
        t = cycle[state["n"] % len(cycle)]
        state["n"] += 1
        return out.index_fill(-1, torch.tensor([t]), 1e4)

    hook = head.register_forward_hook(force)
    pieces = []
    try:
        (c,) = complete(
            model,
            tok,
            [_prompts(tok)[0]],
            GenerateConfig(max_new_tokens=200, greedy=True, loop_guard=24),
            on_text=pieces.append,
        )
    finally:
        hook.remove()
    n = len(c.token_ids)
    assert c.stop_reason == "loop" and any(c.token_ids == (cycle * 3)[i : i + n] for i in range(len(cycle)))
    assert len(cycle) <= len(c.token_ids) <= len(cycle) + 3 and state["n"] < 40
    assert "".join(pieces).strip() == c.text


def test_streamed_text_equals_the_answer(tok):
    from medtune.generate import complete

    model = _llama(tok)
    g = GenerateConfig(max_new_tokens=40, temperature=1.2, top_k=0, seed=3, loop_guard=0)
    for p in _prompts(tok)[:3]:
        pieces = []
        (c,) = complete(model, tok, [p], g, on_text=pieces.append)
        assert "".join(pieces) == c.text and c.text


def test_fused_modules_only_while_decoding(tok):
    """RMSNorm, GELU and rotary fusions swap in only what they reproduce, and only inside the engine: outside it the
    model's logits are bit-identical to before."""
    from transformers import GemmaConfig, GemmaForCausalLM

    from medtune.decoding.fused import fuse_for_decoding

    model = _llama(tok)
    ids = torch.tensor([_prompts(tok)[0]])
    before = model(ids).logits
    assert fuse_for_decoding(model) == 5  # 2 layers x 2 norms + the final norm
    assert type(model.model.norm).__name__ == "FusedLlamaRMSNorm"
    assert torch.equal(model(ids).logits, before)
    gemma = GemmaForCausalLM(
        GemmaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
        )
    )
    assert fuse_for_decoding(gemma) == 0  # its norm scales by 1 + weight: not the fused kernel's form
    assert fuse_for_decoding(_gpt2(tok)) == 2  # one gelu_new a layer


def test_a_model_outside_the_engine_is_untouched(tok, monkeypatch):
    """The fused rotary embedding is in place only while the engine steps, and only for the engine's forward passes:
    after an engine ran, transformers' apply_rotary_pos_emb is the same object as before, and another model of the
    same architecture computes the logits of a fresh one (so does the engine's own model, outside the engine)."""
    from transformers.models.llama import modeling_llama

    from medtune.decoding import fused
    from medtune.generate import complete

    original = modeling_llama.apply_rotary_pos_emb
    ids = torch.tensor([_prompts(tok)[0]])
    fresh = _llama(tok)(ids).logits
    model = _llama(tok)
    seen, rope = [], fused._rope

    def fused_rope(*args, **kwargs):  # records what the modeling file calls while the engine's passes rotate
        if fused._decoding():
            seen.append(modeling_llama.apply_rotary_pos_emb)
        return rope(*args, **kwargs)

    monkeypatch.setattr(fused, "_rope", fused_rope)
    g = GenerateConfig(max_new_tokens=5, greedy=True, loop_guard=0)
    complete(model, tok, _prompts(tok)[:3], g, batch_size=2)
    assert seen and all(f is not original for f in seen)  # the engine's passes rotated through the fused form
    assert modeling_llama.apply_rotary_pos_emb is original and not fused.RotaryPatch._users
    assert torch.equal(_llama(tok)(ids).logits, fresh)
    assert torch.equal(model(ids).logits, fresh)


def test_fused_projections_decode_the_same_tokens(tok, monkeypatch):
    """q/k/v (and gate/up) as one product each while decoding: the engine's greedy answers still equal
    model.generate's, also after the weights change (an adapter merged between two engines), and outside the engine
    the logits are bit-identical."""
    from medtune.decoding import fused
    from medtune.generate import complete

    model = _llama(tok)
    ids = torch.tensor([_prompts(tok)[0]])
    before = model(ids).logits
    assert fused.fuse_projections(model) == 0  # not on the CPU unless asked: the weights are copied
    monkeypatch.setattr(fused, "FUSE_DEVICES", ("cuda", "cpu"))
    assert fused.fuse_projections(model) == 4  # 2 layers x (attention, MLP)
    assert type(model.model.layers[0].self_attn.k_proj).__name__ == "FusedRestLinear"
    assert torch.equal(model(ids).logits, before)
    g = GenerateConfig(max_new_tokens=20, greedy=True, loop_guard=0, repetition_penalty=1.0)
    prompts = _prompts(tok)
    for change in (False, True):
        if change:
            with torch.no_grad():
                for layer in model.model.layers:
                    layer.self_attn.v_proj.weight.mul_(3.0)
                    layer.mlp.up_proj.weight.add_(0.05)
        for p, c in zip(prompts, complete(model, tok, prompts, g, batch_size=2)):
            assert c.token_ids == _hf(model, tok, p, 20)


def test_a_request_without_prompt_tokens_is_refused(tok):
    from medtune.decoding import Request
    from medtune.generate import make_engine

    engine = make_engine(_gpt2(tok), tok, 2)
    with pytest.raises(ValueError, match="at least one prompt token"):
        engine.add(Request([], GenerateConfig()))
    assert engine.pending == 0
