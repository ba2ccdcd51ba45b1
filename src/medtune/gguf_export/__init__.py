"""GGUF export: write a merged model folder as one .gguf file for llama.cpp, Ollama, LM Studio and the like.

    export_gguf(Path("merged"), Path("medtune-f16.gguf"), dtype="f16")

The input is a plain transformers causal-LM folder (config.json, *.safetensors, tokenizer files), as `medtune merge`
writes it; its config.yaml, when present, adds medtune's prompt template and sampling defaults to the metadata.
Two architectures are supported, laid out the way llama.cpp's own converter (convert_hf_to_gguf.py) lays them out:

  gpt2   GPT2LMHeadModel: the Conv1D weights (stored [in, out]) are transposed to the nn.Linear layout [out, in]
  llama  LlamaForCausalLM (SmolLM2, Llama 3.x, ...): q/k rows are permuted from the rotary halves layout of
         transformers to the interleaved pairs llama.cpp expects (transformers' GGUF loader undoes it)

Weights stream one tensor at a time (a model much larger than memory still converts), into a temporary file
beside the destination that replaces it only once complete: `out_file` is either its old self or a whole GGUF.

dtype: f16 (2-D weights float16, norms and biases float32), q8_0 (2-D weights whose rows are a multiple of 32 in
llama.cpp's 8-bit blocks, the others as f16), f32. The position embedding of GPT-2 stays float32, as in llama.cpp.
"""

from medtune.gguf_export.common import LLAMA3_SPLIT, QWEN2_SPLIT
from medtune.gguf_export.ollama import ollama_modelfile, read_gguf_metadata
from medtune.gguf_export.writer import export_gguf

__all__ = ["LLAMA3_SPLIT", "QWEN2_SPLIT", "export_gguf", "ollama_modelfile", "read_gguf_metadata"]
