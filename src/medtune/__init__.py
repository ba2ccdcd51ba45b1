"""medtune: fine-tune GPT-2 on medical instruction data with LoRA / QLoRA, then evaluate, generate, merge, serve."""

__version__ = "0.1.0"
