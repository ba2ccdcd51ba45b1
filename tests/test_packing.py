"""Packing and the fast loss are exact: the same examples give the same loss packed or padded, the chunked loss equals
the model's own, token-budget batches are whole, bounded and reproducible, and the memory planner is sane."""
import pytest
import torch

from medtune import fast
from medtune.config import DataConfig
from medtune.data import IGNORE_INDEX, Collator, PackingCollator, TokenBudgetBatchSampler, encode, load_records

from conftest import tiny_config


def _examples(tok, n=12):
    cfg = DataConfig(source="builtin:sample", max_length=256)
    return [encode(r, tok, cfg) for r in load_records(cfg)[:n]]


def _model(tok, attn="sdpa", dtype=torch.float32, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_layer=2, n_head=4, n_embd=64, n_positions=1024,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    cfg._attn_implementation = attn
    m = GPT2LMHeadModel(cfg).to(dtype).eval()
    m.config.use_cache = False
    return m


def _model_loss(model, batch):
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "labels", "position_ids", "attention_mask")}
    return model(**batch, use_cache=False).loss


def test_packed_loss_equals_padded_loss(tok):
    ex = _examples(tok)
    model = _model(tok)
    with torch.no_grad():
        padded = _model_loss(model, Collator(tok.pad_token_id)(ex))
        rows = PackingCollator(tok.pad_token_id, row_length=256)(ex)
        flat = PackingCollator(tok.pad_token_id, flat=True)(ex)
        assert rows["input_ids"].shape[0] > 1 and flat["input_ids"].shape[0] == 1
        for batch in (rows, flat):
            assert abs(_model_loss(model, batch).item() - padded.item()) < 1e-3


def test_packing_changes_loss_without_boundaries(tok):
    """The guard has teeth: with plain positions the packed examples see each other and the loss moves."""
    ex = _examples(tok, 5)
    model = _model(tok)
    with torch.no_grad():
        flat = PackingCollator(tok.pad_token_id, flat=True)(ex)
        assert flat["input_ids"].shape[1] <= 1024
        padded = _model_loss(model, Collator(tok.pad_token_id)(ex))
        leaky = dict(flat, position_ids=torch.arange(flat["input_ids"].shape[1])[None])
        assert abs(_model_loss(model, leaky).item() - padded.item()) > 1e-3


def test_chunked_loss_and_gradients_equal_plain(tok):
    ex = _examples(tok, 8)
    model = _model(tok, dtype=torch.float64)
    batch = PackingCollator(tok.pad_token_id, flat=True)(ex)
    plain = _model_loss(model, batch)
    plain.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    decoder, weight = fast.fast_loss_parts(model)
    hidden = decoder(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    total, n = fast.linear_cross_entropy(hidden, weight, batch["labels"], chunk=37)
    loss = total / n
    loss.backward()
    assert abs(loss.item() - plain.item()) < 1e-6
    assert n.item() == (batch["labels"][:, 1:] != IGNORE_INDEX).sum().item()
    for name, p in model.named_parameters():  # the tied embedding gets the output layer's gradient too
        assert torch.allclose(p.grad, ref[name], atol=1e-8, rtol=1e-6), name


def test_norms_keep_bf16_under_autocast(tok):
    """Under bf16 autocast the patched layer norms keep activations bf16; the loss stays that of plain autocast."""
    ex = _examples(tok, 6)
    batch = PackingCollator(tok.pad_token_id, flat=True)(ex)
    model = _model(tok, dtype=torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _model_loss(model, batch)
        assert fast.keep_dtype_norms(model) == 2 * 2 + 1
        assert model.transformer.ln_f(torch.randn(3, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16
        decoder, weight = fast.fast_loss_parts(model)
        hidden = decoder(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).last_hidden_state
        assert hidden.dtype == torch.bfloat16
        total, n = fast.linear_cross_entropy(hidden, weight, batch["labels"])
    assert abs((total / n).item() - ref.item()) < 2e-2 * ref.item()


def test_trainer_fast_loss_matches_model_loss(tok, tmp_path):
    """MedtuneTrainer.compute_loss (chunked, from hidden states) equals the Trainer's default loss on a LoRA model."""
    from medtune import data as data_mod, model as model_mod, train

    cfg = tiny_config(tmp_path / "out", "train.packing=true", "train.batch_tokens=512", "model.lora_dropout=0.0")
    prepared = data_mod.prepare(cfg.data, tok, log=lambda *a: None)
    model = model_mod.add_lora(model_mod.load_base_model(cfg.model, tok), cfg.model, log=lambda *a: None)
    trainer, collator, info = train.make_trainer(cfg, model, tok, prepared, tmp_path / "out", log=lambda *a: None)
    assert info["loss"] == "chunked" and trainer.train_batch_sampler is not None
    model.eval()
    batch = collator(prepared.encoded["train"][:10])
    lora = [p for n, p in model.named_parameters() if p.requires_grad]

    def loss_and_grads():
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        return loss.item(), [p.grad.clone() for p in lora]

    fast_loss, fast_grads = loss_and_grads()
    fast_parts, trainer.fast_loss = trainer.fast_loss, None
    slow_loss, slow_grads = loss_and_grads()
    trainer.fast_loss = fast_parts
    assert abs(fast_loss - slow_loss) < 1e-4
    assert any(g.abs().sum() > 0 for g in fast_grads)
    for fast_g, slow_g in zip(fast_grads, slow_grads):
        torch.testing.assert_close(fast_g, slow_g, rtol=1e-3, atol=1e-6)


def test_packing_collator_layout(tok):
    ex = _examples(tok, 10)
    col = PackingCollator(tok.pad_token_id, row_length=256)
    b = col(ex)
    assert col.tokens_seen == sum(len(e["input_ids"]) for e in ex)
    assert b["input_ids"].shape[1] <= 256
    starts = (b["position_ids"] == 0)
    assert (b["labels"][starts] == IGNORE_INDEX).all()  # no example is predicted from the one before it
    flat = PackingCollator(tok.pad_token_id, flat=True)(ex)
    cu = flat["cu_seq_lens_q"]
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == flat["input_ids"].shape[1] == col.tokens_seen
    assert flat["max_length_q"] == max(len(e["input_ids"]) for e in ex)
    assert (flat["position_ids"][0, cu[:-1].long()] == 0).all()


def test_token_budget_sampler():
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(5, 300, (500,), generator=g).tolist()
    s = TokenBudgetBatchSampler(lengths, 1024, seed=3)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in batches)
    assert len(s) == len(batches) <= sum(lengths) / 1024 * 1.1 + 1  # first fit: nearly full batches
    assert list(s) == batches  # same epoch, same order
    s.set_epoch(1)
    again = list(s)
    assert again != batches and sorted(map(tuple, again)) == sorted(map(tuple, batches))
    s2 = TokenBudgetBatchSampler(lengths, 1024, seed=3)
    s2.set_epoch(1)
    assert list(s2) == again  # a resumed run sees the same order


def test_memory_plan():
    from transformers import GPT2Config

    xl = GPT2Config(n_layer=48, n_head=25, n_embd=1600)
    small = GPT2Config()
    roomy = fast.plan(small, 60, int(0.5 * fast.GIB), 512, 16384, 50257)
    assert roomy["checkpointing"] is False and roomy["batch_tokens"] == 16384
    lean = fast.plan(xl, 4, int(1.3 * fast.GIB), 512, 16384, 50257)
    assert lean["checkpointing"] is True and 512 <= lean["batch_tokens"] < 16384
    assert lean["chunk"] * 50257 * 10 <= 0.06 * 4 * fast.GIB
    with pytest.raises(ValueError):
        fast.plan(xl, 1.2, int(1.3 * fast.GIB), 512, 16384, 50257)


@pytest.mark.skipif(not (torch.cuda.is_available() and fast.varlen_available()), reason="needs CUDA flash varlen")
def test_varlen_flash_matches_padded_sdpa(tok):
    ex = _examples(tok, 16)
    ref = _model(tok, dtype=torch.bfloat16).cuda()
    assert fast.register_varlen()
    packed = _model(tok, dtype=torch.bfloat16)
    packed.load_state_dict(ref.state_dict())
    packed = packed.cuda()
    packed.set_attn_implementation(fast.VARLEN)
    padded = {k: v.cuda() for k, v in Collator(tok.pad_token_id)(ex).items()}
    flat = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in PackingCollator(tok.pad_token_id, flat=True)(ex).items()}
    a = ref(**padded, use_cache=False).loss
    b = packed(**flat, use_cache=False).loss
    a.backward()
    b.backward()
    assert abs(a.item() - b.item()) < 2e-2 * abs(a.item())
    ga = ref.transformer.h[0].attn.c_attn.weight.grad.float()
    gb = packed.transformer.h[0].attn.c_attn.weight.grad.float()
    assert ((ga - gb).norm() / ga.norm()).item() < 5e-2
