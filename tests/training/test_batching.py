"""Batches (medtune.batching): padding by position, packing that keeps examples apart (the same loss packed
or padded), and token-budget batches that are whole, bounded and reproducible."""

import torch

from medtune.batching import NUM_TOKENS, Collator, PackingCollator, TokenBudgetBatchSampler
from medtune.config import DataConfig
from medtune.data import IGNORE_INDEX, encode

REC = {
    "instruction": "Answer this question truthfully",
    "input": "What causes a fever?",
    "output": "A fever is usually the body fighting an infection.",
}


def test_collator_pads_by_position_not_by_eos_id(tok):
    assert tok.pad_token_id == tok.eos_token_id  # GPT-2 style: the trap this guards against
    a, b = encode(REC, tok, DataConfig()), encode(dict(REC, output="Rest."), tok, DataConfig())
    batch = Collator(tok.pad_token_id)([a, b])
    short = len(b["input_ids"])
    assert batch["labels"][1, short - 1] == tok.eos_token_id  # the answer's EOS is a target
    assert batch["attention_mask"][1, short - 1] == 1
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][1, short:] == 0).all()
    assert batch["labels"][0, -1] == tok.eos_token_id


def test_packed_loss_equals_padded_loss(tok, examples, small_gpt2, model_loss):
    ex = examples()
    model = small_gpt2()
    with torch.no_grad():
        padded = model_loss(model, Collator(tok.pad_token_id)(ex))
        rows = PackingCollator(tok.pad_token_id, row_length=256)(ex)
        flat = PackingCollator(tok.pad_token_id, flat=True)(ex)
        assert rows["input_ids"].shape[0] > 1 and flat["input_ids"].shape[0] == 1
        for batch in (rows, flat):
            assert abs(model_loss(model, batch).item() - padded.item()) < 1e-3


def test_packing_changes_loss_without_boundaries(tok, examples, small_gpt2, model_loss):
    """The guard has teeth: with plain positions the packed examples see each other and the loss moves."""
    ex = examples(5)
    model = small_gpt2()
    with torch.no_grad():
        flat = PackingCollator(tok.pad_token_id, flat=True)(ex)
        assert flat["input_ids"].shape[1] <= 1024
        padded = model_loss(model, Collator(tok.pad_token_id)(ex))
        leaky = dict(flat, position_ids=torch.arange(flat["input_ids"].shape[1])[None])
        assert abs(model_loss(model, leaky).item() - padded.item()) > 1e-3


def test_packing_collator_layout(tok, examples):
    ex = examples(10)
    col = PackingCollator(tok.pad_token_id, row_length=256)
    b = col(ex)
    assert b[NUM_TOKENS] == sum(len(e["input_ids"]) for e in ex)
    assert b["input_ids"].shape[1] <= 256
    starts = b["position_ids"] == 0
    assert (b["labels"][starts] == IGNORE_INDEX).all()  # no example is predicted from the one before it
    flat = PackingCollator(tok.pad_token_id, flat=True)(ex)
    cu = flat["cu_seq_lens_q"]
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == flat["input_ids"].shape[1] == b[NUM_TOKENS]
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
