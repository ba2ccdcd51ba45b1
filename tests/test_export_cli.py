"""`medtune export RUN --format gguf`: a training run is merged on the way, the file and an Ollama Modelfile are
written, the file carries the run's prompt template; bad --out is one clear line."""

from medtune.cli import main


def test_export_a_run_to_gguf(tiny_run, tmp_path, capsys):
    from medtune.gguf_export import read_gguf_metadata

    out = tmp_path / "tiny.gguf"
    assert main(["export", str(tiny_run()), "--out", str(out), "--dtype", "q8_0"]) == 0
    meta = read_gguf_metadata(out)
    assert meta["general.architecture"] == "gpt2" and "### Response:" in meta["medtune.prompt_template"]
    modelfile = (tmp_path / "tiny.Modelfile").read_text()
    assert modelfile.startswith("FROM ./tiny.gguf") and "{{ .Prompt }}" in modelfile
    assert not list(tmp_path.glob(".medtune-export-*"))  # the temporary merged folder is gone
    assert main(["export", str(tiny_run()), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_a_512_position_gpt2_gguf_loads_back(tiny_run, tmp_path, load_run):
    """transformers' GGUF reader assumes GPT-2's 1024 positions; medtune's loader reads the file's context length, so
    the tiny preset's export (512 positions) loads back with logits close to the merged model's (q8_0 tolerance)."""
    import torch

    from medtune.gguf_load import load_gguf

    out = tmp_path / "tiny.gguf"
    assert main(["export", str(tiny_run()), "--out", str(out), "--dtype", "f16"]) == 0
    loaded = load_gguf(out)
    assert loaded.config.n_positions == 512
    model, tok, _ = load_run(tiny_run())
    ids = torch.tensor([tok("What is asthma? A disease of the airways.")["input_ids"]])
    with torch.no_grad():
        diff = (loaded(ids).logits - model(ids).logits).abs().max()
    assert float(diff) < 0.02  # f16 round trip
