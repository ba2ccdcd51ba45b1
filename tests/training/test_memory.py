"""The max_memory_gib planner (medtune.training.memory) is sane."""

import sys

import pytest

from medtune.training import memory


def test_memory_plan():
    from transformers import GPT2Config

    xl = GPT2Config(n_layer=48, n_head=25, n_embd=1600)
    small = GPT2Config()
    roomy = memory.plan(small, 60, int(0.5 * memory.GIB), 512, 16384, 50257)
    assert roomy.checkpointing is False and roomy.batch_tokens == 16384
    lean = memory.plan(xl, 4, int(1.3 * memory.GIB), 512, 16384, 50257)
    assert lean.checkpointing is True and 512 <= lean.batch_tokens < 16384
    assert lean.checkpoint_layers == 48  # every layer, and still fewer tokens than wanted
    assert lean.chunk * 50257 * 10 <= 0.06 * 4 * memory.GIB
    with pytest.raises(memory.DoesNotFit, match="leaves room for"):
        memory.plan(xl, 1.2, int(1.3 * memory.GIB), 512, 16384, 50257)


def test_the_plan_fills_the_budget_with_as_few_checkpointed_layers_as_fit():
    """gpt2-xl, 16-48 GiB: the whole wanted batch, with as few checkpointed layers as let it fit (not fewer tokens:
    a step's fixed cost makes small batches slow); more budget means fewer of them, each plan within 0.75-0.95 of
    its budget."""
    from transformers import GPT2Config

    xl = GPT2Config(n_layer=48, n_head=25, n_embd=1600)
    static = int(3 * memory.GIB)
    plans = {gib: memory.plan(xl, gib, static, 512, 16384, 50257) for gib in (16, 24, 32, 48)}
    ks = [p.checkpoint_layers for p in plans.values()]
    assert 0 < ks[1] < 48 and ks == sorted(ks, reverse=True) and len(set(ks)) == 4
    for gib, p in plans.items():
        assert p.batch_tokens == 16384 and 0.75 * gib <= p.planned_peak_gib <= 0.95 * gib
    assert memory.plan(xl, 80, static, 512, 16384, 50257).checkpoint_layers == 0


def test_checkpoint_only_switches_the_last_layers():
    from transformers import GPT2Config, GPT2LMHeadModel

    from medtune.model import enable_checkpointing

    model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=32, n_head=2, vocab_size=64))
    enable_checkpointing(model)
    assert memory.checkpoint_only(list(model.transformer.h), 1) == 1
    assert [layer.gradient_checkpointing for layer in model.transformer.h] == [False, False, False, True]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc, /proc")
def test_freed_host_memory_goes_back_to_the_system():
    """After return_freed_host_memory, freeing CPU tensors below the newest one gives their memory back (glibc's
    default keeps it once a freed 16 MB block has raised its dynamic mmap threshold). In a subprocess: the setting is
    process-wide."""
    import subprocess

    code = """
import torch
from medtune.training import memory
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
assert memory.return_freed_host_memory()
x = torch.ones(4 << 20)
del x  # 16 MB freed: glibc's own threshold would rise above the 2 MB tensors below
kept = [torch.ones(1 << 19) for _ in range(64)]  # 64 x 2 MB
before = rss()
del kept[:-1]
print(before - rss())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout) > 100  # MB given back of the 126 freed
