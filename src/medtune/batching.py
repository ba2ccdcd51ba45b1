"""Batches for training and evaluation: right-padded, or packed without padding, or by token budget.

transformers' DataCollatorWithFlattening does padding-free packing too, but for one flat row only; this one also
packs into rows of at most data.max_length for SDPA (CPU), and keeps label masking by position (GPT-2 pads with EOS).
"""

from __future__ import annotations

import torch

from medtune.data import IGNORE_INDEX

# every batch says how many real (non-padding) tokens it holds, as a Python int (a tensor would be moved to the GPU
# with the batch, and reading it back costs a device sync every step); the trainer takes the key out before the
# forward and counts it when the batch is trained on (a collator's own count runs ahead: the data loader prefetches,
# and evaluation batches go through it too)
NUM_TOKENS = "num_tokens"


class Collator:
    """Pads a batch on the right. Padding positions get attention 0 and label -100 by position, so an EOS
    inside the answer is still learned even when pad id == EOS id (GPT-2)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.tensor(f["input_ids"])
            labels[i, :k] = torch.tensor(f["labels"])
            mask[i, :k] = 1
        n = sum(len(f["input_ids"]) for f in features)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, NUM_TOKENS: n}


class PackingCollator:
    """Padding-free packing: the batch's examples are laid end to end, with position ids that restart at 0 for
    every example, so attention that honours example boundaries keeps them apart.

    flat=True (CUDA, varlen flash attention): one row holding every example, plus `cu_seq_lens_q/k` (example
    boundaries, int32) and `max_length_q/k` for the attention kernel. No padding at all.
    flat=False (SDPA elsewhere): examples are packed first-fit into rows of at most `row_length` tokens (so the
    block-diagonal mask transformers builds from the position ids stays small); the rows' tails are padded with a
    separate dummy segment whose labels are -100.

    The first label of each example is masked: it would be predicted from the previous example's last token."""

    def __init__(self, pad_token_id: int, row_length: int | None = None, flat: bool = False):
        self.pad_token_id = pad_token_id
        self.row_length = row_length
        self.flat = flat

    def _rows(self, features: list[dict]) -> list[list[dict]]:
        if self.flat or not self.row_length:
            return [features]
        rows: list[list[dict]] = []
        room: list[int] = []
        for f in features:  # first fit, in the order given (the sampler already shuffled)
            k = len(f["input_ids"])
            for i, r in enumerate(room):
                if k <= r:
                    rows[i].append(f)
                    room[i] -= k
                    break
            else:
                rows.append([f])
                room.append(max(self.row_length - k, 0))
        return rows

    def __call__(self, features: list[dict]) -> dict:
        rows = self._rows(features)
        width = max(sum(len(f["input_ids"]) for f in r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        lengths = []
        for i, row in enumerate(rows):
            at = 0
            for f in row:
                k = len(f["input_ids"])
                ids[i, at : at + k] = torch.as_tensor(f["input_ids"])
                labels[i, at + 1 : at + k] = torch.as_tensor(f["labels"][1:])
                pos[i, at : at + k] = torch.arange(k)
                lengths.append(k)
                at += k
            if at < width:  # tail padding: its own segment, never a target
                pos[i, at:] = torch.arange(width - at)
        batch = {"input_ids": ids, "labels": labels, "position_ids": pos, NUM_TOKENS: sum(lengths)}
        if self.flat:
            cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
            cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
            batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
        return batch


class TokenBudgetBatchSampler:
    """Batches of whole examples holding at most `max_tokens` tokens each (an example longer than that gets a batch
    of its own). Batches are formed once from a seeded shuffle (first-fit, so they come out nearly full) and their
    order is reshuffled every epoch: the number of batches is fixed, and a resumed run sees the same order."""

    def __init__(self, lengths: list[int], max_tokens: int, seed: int = 42, shuffle: bool = True):
        self.max_tokens = max_tokens
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.sampler = self  # accelerate calls batch_sampler.sampler.set_epoch(epoch)
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(lengths), generator=g).tolist() if shuffle else list(range(len(lengths)))
        batches: list[list[int]] = []
        room: list[int] = []
        open_from = 0  # first fit over the last few open batches keeps this linear
        for i in order:
            k = lengths[i]
            for b in range(open_from, len(batches)):
                if k <= room[b]:
                    batches[b].append(i)
                    room[b] -= k
                    break
            else:
                batches.append([i])
                room.append(max_tokens - k)
                open_from = max(open_from, len(batches) - 8)
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        if not self.shuffle:
            yield from self.batches
            return
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        for j in torch.randperm(len(self.batches), generator=g).tolist():
            yield self.batches[j]
