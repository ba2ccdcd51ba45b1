"""The chunked loss (medtune.training.loss) is exact: it equals the model's own loss and gradients, keeps bf16 with
the dtype-keeping layer norms (medtune.training.patches), and the Trainer's chunked loss equals its default one."""

import torch

from medtune.data import IGNORE_INDEX
from medtune.model import decoder_and_head
from medtune.training.batching import PackingCollator
from medtune.training.loss import linear_cross_entropy
from medtune.training.patches import keep_dtype_norms


def test_chunked_loss_and_gradients_equal_plain(tok, examples, small_gpt2, model_loss):
    ex = examples(8)
    model = small_gpt2(dtype=torch.float64)
    batch = PackingCollator(tok.pad_token_id, flat=True)(ex)
    plain = model_loss(model, batch)
    plain.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    decoder, weight = decoder_and_head(model)
    hidden = decoder(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    ).last_hidden_state
    total, n = linear_cross_entropy(hidden, weight, batch["labels"], chunk=37)
    loss = total / n
    loss.backward()
    assert abs(loss.item() - plain.item()) < 1e-6
    assert n.item() == (batch["labels"][:, 1:] != IGNORE_INDEX).sum().item()
    for name, p in model.named_parameters():  # the tied embedding gets the output layer's gradient too
        assert torch.allclose(p.grad, ref[name], atol=1e-8, rtol=1e-6), name


def test_norms_keep_bf16_under_autocast(tok, examples, small_gpt2, model_loss):
    """Under bf16 autocast the patched layer norms keep activations bf16; the loss stays that of plain autocast."""
    ex = examples(6)
    batch = PackingCollator(tok.pad_token_id, flat=True)(ex)
    model = small_gpt2(dtype=torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model_loss(model, batch)
        assert keep_dtype_norms(model) == 2 * 2 + 1
        assert model.transformer.ln_f(torch.randn(3, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16
        decoder, weight = decoder_and_head(model)
        hidden = decoder(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).last_hidden_state
        assert hidden.dtype == torch.bfloat16
        total, n = linear_cross_entropy(hidden, weight, batch["labels"])
    assert abs((total / n).item() - ref.item()) < 2e-2 * ref.item()


def test_trainer_fast_loss_matches_model_loss(tok, tmp_path, tiny_config):
    """MedtuneTrainer.compute_loss (chunked, from hidden states) equals the Trainer's default loss on a LoRA model."""
    from medtune import data as data_mod
    from medtune import model as model_mod
    from medtune import training

    cfg = tiny_config(tmp_path / "out", "train.packing=true", "train.batch_tokens=512", "model.lora_dropout=0.0")
    prepared = data_mod.prepare(cfg.data, tok)
    model = model_mod.add_lora(model_mod.load_base_model(cfg.model, tok), cfg.model)
    trainer, collator, info = training.make_trainer(cfg, model, tok, prepared, tmp_path / "out")
    assert info.loss == "chunked" and trainer.train_batch_sampler is not None
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
