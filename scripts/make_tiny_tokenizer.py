"""Rebuild src/medtune/assets/tiny_tokenizer: a small byte-level BPE (GPT-2 style) trained on medtune's own
sample data, so that the tiny-cpu preset works with no download. Run: python scripts/make_tiny_tokenizer.py"""

import json
import shutil
import tempfile
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from medtune.config import DataConfig
from medtune.data import SAMPLE, format_prompt

EOS = "<|endoftext|>"
OUT = Path(__file__).resolve().parents[1] / "src" / "medtune" / "assets" / "tiny_tokenizer"


def main(vocab_size: int = 2048):
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    cfg = DataConfig()
    texts = [format_prompt(r, cfg) + r["output"] for r in rows]
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS, model_max_length=512
    )
    tmp = Path(tempfile.mkdtemp())
    tok.save_pretrained(tmp)
    check = AutoTokenizer.from_pretrained(tmp)
    ids = check("What causes a fever?")["input_ids"]
    assert ids and check.decode(ids) == "What causes a fever?", ids
    assert check.eos_token_id == check.convert_tokens_to_ids(EOS)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tmp, OUT)
    print(f"wrote {OUT} (vocab {len(check)})")


if __name__ == "__main__":
    main()
