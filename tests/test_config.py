import pytest

from medtune.config import load_config, dump_yaml, from_dict
from medtune.errors import MedtuneError
import yaml

from conftest import ROOT, TINY


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_presets_load(preset):
    if preset.name.startswith("accelerate"):
        pytest.skip("accelerate launcher config, not a medtune preset")
    cfg = load_config(preset)
    assert cfg.model.name and cfg.data.source


def test_overrides_and_flags_win():
    cfg = load_config(TINY, ["model.quantization=4bit", "train.max_steps=50", "model.lora_targets=c_attn,c_fc"],
                      output_dir="/tmp/x", model__name="random:gpt2")
    assert cfg.model.quantization == "4bit" and cfg.train.max_steps == 50
    assert cfg.model.lora_targets == ["c_attn", "c_fc"]
    assert cfg.output_dir == "/tmp/x" and cfg.model.name == "random:gpt2"
    assert isinstance(cfg.train.learning_rate, float)


def test_roundtrip_through_yaml():
    cfg = load_config(TINY, ["train.epochs=2"])
    assert from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg


@pytest.mark.parametrize("override, needle", [
    ("train.nope=1", "train.nope"),
    ("nosection.key=1", "nosection"),
    ("train.max_steps=abc", "train.max_steps"),
    ("model.quantization=3bit", "model.quantization"),
    ("train.packing=maybe", "train.packing"),
    ("train", "section.key=value"),
])
def test_bad_keys_name_the_key(override, needle):
    with pytest.raises(MedtuneError, match=needle.replace(".", r"\.")):
        load_config(TINY, [override])


def test_bad_yaml_file(tmp_path):
    (tmp_path / "c.yaml").write_text("model: [unclosed")
    with pytest.raises(MedtuneError, match="not valid YAML"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(MedtuneError, match="not found"):
        load_config(tmp_path / "missing.yaml")
