"""Fixtures of the training tests: real examples of the builtin sample, small GPT-2 models, a model's own loss."""

import pytest
import torch


@pytest.fixture(scope="session")
def examples(tok):
    """A function: n -> the first n records of builtin:sample encoded (max_length 256)."""
    from medtune.config import DataConfig
    from medtune.data import encode, load_records

    def make(n=12):
        cfg = DataConfig(source="builtin:sample", max_length=256)
        return [encode(r, tok, cfg) for r in load_records(cfg)[:n]]

    return make


@pytest.fixture(scope="session")
def small_gpt2(tok):
    """A function: (attn="sdpa", dtype=float32, seed=0) -> a seeded 2-layer GPT-2 in eval mode, no cache."""

    def make(attn="sdpa", dtype=torch.float32, seed=0):
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(seed)
        cfg = GPT2Config(
            vocab_size=len(tok),
            n_layer=2,
            n_head=4,
            n_embd=64,
            n_positions=1024,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.eos_token_id,
        )
        cfg._attn_implementation = attn
        m = GPT2LMHeadModel(cfg).to(dtype).eval()
        m.config.use_cache = False
        return m

    return make


@pytest.fixture(scope="session")
def model_loss():
    """A function: (model, batch) -> the model's own loss on a collator's batch."""

    def loss(model, batch):
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "labels", "position_ids", "attention_mask")}
        return model(**batch, use_cache=False).loss

    return loss
