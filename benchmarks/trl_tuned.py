"""TRL's SFTTrainer set up for speed: the reference row that medtune's training speed is compared with next to the
recipe TRL recommends (../shared/bench/anchor_baselines.py). Not a test.

  python benchmarks/trl_tuned.py {lora|qlora} {gpt2|...|gpt2-xl|llama-1b|llama-8b|qwen2.5-7b|...} [--steps 12]
         [--tokens 16384] [--checkpointing] [--base DIR] [--cpu --records 64 --tokenizer DIR --data FILE]

What "tuned" means here (TRL 1.16): best-fit-decreasing packing into padding-free batches (`packing_strategy="bfd"`,
which turns `padding_free` on), its default loss (computed in chunks, without the full logits), bf16, no gradient
checkpointing unless asked (throughput.py retries with it when memory runs out), the same tokens per step as
medtune's presets (16,384: 32 sequences of up to 512 tokens), LoRA r16 on every linear layer of the blocks
(GPT-2: c_attn/c_proj/c_fc; Llama / Qwen2: q/k/v/o_proj, gate/up/down_proj); qlora loads the weights in NF4 with
double quantization and bf16 compute. Random weights of the shape asked for (medtune's random:<size>, speed and memory
do not depend on their values; --base: a folder saved by throughput.py, so that both sides train the same model), the
wikidoc data. Prints one line `RESULT {json}` (tok_s, peak_gib, s_per_step, steps) in the form throughput.py reads
from the anchor script.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))


class Clock:
    """A Trainer callback (duck-typed) and collator wrapper: real tokens and seconds after `warm` steps."""

    def __init__(self, collate, warm: int, cuda: bool):
        self.collate, self.warm, self.cuda = collate, warm, cuda
        self.tokens = self.t0 = self.tok0 = self.steps0 = 0
        self.dt = 0.0

    def __call__(self, features):
        batch = self.collate(features)
        mask = batch.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())  # padding-free
        return batch

    def _sync(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.warm:
            self._sync()
            self.t0, self.tok0, self.steps0 = time.perf_counter(), self.tokens, state.global_step
            if self.cuda:
                import torch

                torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, args, state, control, **kw):
        self._sync()
        self.dt, self.steps = time.perf_counter() - self.t0, state.global_step - self.steps0


def main() -> int:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from medtune.model import build_random
    from medtune.validate import random_shapes

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", choices=["lora", "qlora"])
    ap.add_argument("size", choices=random_shapes())
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=16384, help="tokens per step (sequences of up to 512)")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--base", help="a saved model folder of that size (throughput.py's random base)")
    ap.add_argument("--cpu", action="store_true", help="no GPU: float32, no 4-bit (a smoke test)")
    ap.add_argument("--records", type=int, help="first N records only")
    ap.add_argument("--tokenizer", default=str(SHARED / "gpt2_tokenizer"))
    ap.add_argument("--data", default=str(SHARED / "wikidoc_patient_information" / "wikidoc_patient_information.json"))
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.cpu
    if args.recipe == "qlora" and not cuda:
        sys.exit("qlora needs a CUDA GPU (bitsandbytes)")

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    tok.pad_token = tok.eos_token
    rows = json.loads(Path(args.data).read_text())[: args.records]
    ds = Dataset.from_dict(
        {
            "prompt": [
                f"### Instruction:\n{r['instruction']}\n\n### Input:\n{r['input']}\n\n### Response:\n" for r in rows
            ],
            "completion": [r["output"] for r in rows],
        }
    )
    folder = tempfile.mkdtemp()
    if args.base:
        base = args.base
    else:
        build_random(f"random:{args.size}", tok).save_pretrained(folder)
        base = folder
    kw: dict = dict(dtype=torch.bfloat16 if cuda else torch.float32)
    if args.recipe == "qlora":
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    if cuda:
        kw["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(base, **kw)
    targets = ["c_attn", "c_proj", "c_fc"]
    if model.config.model_type != "gpt2":  # Llama / Qwen2: every projection of attention and the SwiGLU MLP
        targets = [f"{m}_proj" for m in ("q", "k", "v", "o", "gate", "up", "down")]
    sft = SFTConfig(
        output_dir=f"{folder}/out",
        per_device_train_batch_size=max(1, args.tokens // 512),
        max_length=512,
        packing=True,
        packing_strategy="bfd",
        padding_free=True,
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=args.checkpointing,
        max_steps=args.warmup + args.steps,
        logging_steps=10_000,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=sft, train_dataset=ds, processing_class=tok, peft_config=lora)
    clock = Clock(trainer.data_collator, args.warmup, cuda)
    trainer.data_collator = clock
    trainer.add_callback(
        type(
            "ClockCallback", (TrainerCallback,), {"on_step_end": clock.on_step_end, "on_train_end": clock.on_train_end}
        )
    )
    trainer.train()
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    result = dict(
        mode=f"trl-tuned-{args.recipe}",
        size=args.size,
        steps=clock.steps,
        s_per_step=round(clock.dt / max(clock.steps, 1), 4),
        tok_s=round((clock.tokens - clock.tok0) / clock.dt) if clock.dt else 0,
        peak_gib=peak,
        checkpointing=args.checkpointing,
    )
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
