"""The chunked loss (medtune.loss) is exact: it equals the model's own loss and gradients, keeps bf16 with
the dtype-keeping layer norms (medtune.training.patches), and the Trainer's chunked loss equals its default one."""

import pytest
import torch

from medtune.batching import PackingCollator
from medtune.data import IGNORE_INDEX
from medtune.loss import linear_cross_entropy
from medtune.model import decoder_and_head
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


class _BigTensors(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the tensors of at least `min_bytes` that ops create, and the most of them alive at one time."""

    def __init__(self, min_bytes: int):
        super().__init__()
        self.min_bytes, self.alive, self.most, self.largest = min_bytes, {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() >= self.min_bytes:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
                self.alive.setdefault(t.untyped_storage().data_ptr(), []).append(weakref.ref(t))
        self.alive = {k: refs for k, refs in self.alive.items() if any(r() is not None for r in refs)}
        self.most = max(self.most, len(self.alive))
        return out


@pytest.mark.parametrize("grad", [True, False], ids=["training", "evaluation"])
def test_the_loss_holds_one_chunk_of_logits_at_a_time(grad):
    """Training (forward and backward) and evaluation alike: no tensor larger than one chunk of logits, and never two
    of them alive together (before, logsumexp's copy and the previous chunk's gradient doubled the chunk; on CPU the
    vocabulary is not padded, so no padded copy of the output weight either)."""
    torch.manual_seed(0)
    vocab, dim, chunk = 1000, 16, 64
    hidden = torch.randn(2, 300, dim, requires_grad=grad)
    weight = torch.randn(vocab, dim, requires_grad=grad)
    labels = torch.randint(0, vocab, (2, 300))
    chunk_bytes = chunk * vocab * 4
    with torch.set_grad_enabled(grad), _BigTensors(chunk_bytes // 2) as seen:
        total, n = linear_cross_entropy(hidden, weight, labels, chunk=chunk)
        if grad:
            total.backward()
    assert n.item() == 2 * 299
    assert seen.largest <= chunk_bytes
    assert seen.most == 1


def test_cpu_chunks_are_smaller():
    from medtune.loss import CHUNK_BYTES_CPU, default_chunk

    assert default_chunk(50257, CHUNK_BYTES_CPU) == 512  # 0.1 GB of float32 logits for GPT-2's vocabulary
    assert default_chunk(50257) == 2048


def test_an_evaluation_step_keeps_no_logits(tok, tmp_path, tiny_config):
    """The Trainer's evaluation step returns the loss alone (prediction_loss_only): the logits are neither kept nor,
    through the chunked loss, ever made for the whole batch."""
    from medtune import data as data_mod
    from medtune import model as model_mod
    from medtune import training

    cfg = tiny_config(tmp_path / "out", "train.packing=true", "train.batch_tokens=512")
    prepared = data_mod.prepare(cfg.data, tok)
    model = model_mod.add_lora(model_mod.load_base_model(cfg.model, tok), cfg.model)
    trainer, collator, _ = training.make_trainer(cfg, model, tok, prepared, tmp_path / "out")
    trainer.loss_chunk = 64  # rows: far fewer than the batch's positions
    model.eval()  # as Trainer.evaluate has it
    batch = collator(prepared.encoded["validation"][:8])
    positions = batch["input_ids"].numel()
    with _BigTensors(positions * len(tok) * 4 // 2) as seen:  # half the batch's logits in float32
        loss, logits, labels = trainer.prediction_step(model, batch, trainer.args.prediction_loss_only)
    assert loss is not None and logits is None and labels is None
    assert seen.largest == 0
