"""The max_memory_gib planner (medtune.training.memory) is sane."""

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
    assert lean.chunk * 50257 * 10 <= 0.06 * 4 * memory.GIB
    with pytest.raises(ValueError):
        memory.plan(xl, 1.2, int(1.3 * memory.GIB), 512, 16384, 50257)
