from pathlib import Path

import pytest
import yaml

from medtune.config import dump_yaml, from_dict, help_text
from medtune.errors import MedtuneError
from medtune.validate import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # parametrize needs the presets before fixtures exist


@pytest.mark.parametrize("preset", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_presets_load(preset):
    if preset.name.startswith("accelerate"):
        pytest.skip("accelerate launcher config, not a medtune preset")
    cfg = load_config(preset)
    assert cfg.model.name and cfg.data.source


def test_overrides_and_flags_win(tiny_preset):
    cfg = load_config(
        tiny_preset,
        ["model.quantization=4bit", "train.max_steps=50", "model.lora_targets=c_attn,c_fc"],
        output_dir="/tmp/x",
        model__name="random:gpt2",
    )
    assert cfg.model.quantization == "4bit" and cfg.train.max_steps == 50
    assert cfg.model.lora_targets == ["c_attn", "c_fc"]
    assert cfg.output_dir == "/tmp/x" and cfg.model.name == "random:gpt2"
    assert isinstance(cfg.train.learning_rate, float)


def test_roundtrip_through_yaml(tiny_preset):
    cfg = load_config(tiny_preset, ["train.epochs=2"])
    assert from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.nope=1", "train.nope"),
        ("nosection.key=1", "nosection"),
        ("train.max_steps=abc", "train.max_steps"),
        ("model.quantization=3bit", "model.quantization"),
        ("train.packing=maybe", "train.packing"),
        ("train", "section.key=value"),
    ],
)
def test_bad_keys_name_the_key(tiny_preset, override, needle):
    with pytest.raises(MedtuneError, match=needle.replace(".", r"\.")):
        load_config(tiny_preset, [override])


def test_bad_yaml_file(tmp_path):
    (tmp_path / "c.yaml").write_text("model: [unclosed")
    with pytest.raises(MedtuneError, match="not valid YAML"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(MedtuneError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.quantization=3bit", "config key 'model.quantization' must be one of none, 8bit, 4bit, got '3bit'"),
        ("train.batch_size=0", "config key 'train.batch_size' must be >= 1, got 0"),
        ("model.lora_dropout=1.5", "config key 'model.lora_dropout' must be < 1, got 1.5"),
        ("train.max_steps=0", "config key 'train.max_steps' must be -1 (use train.epochs) or >= 1, got 0"),
        (
            "train.disable=gelu,fast",
            "config key 'train.disable' must be one of gelu, norms, varlen, chunked_loss, lean_attention, host_memory, "
            "got 'fast'",
        ),
    ],
)
def test_choice_and_bound_messages(tiny_preset, override, message):
    with pytest.raises(MedtuneError) as e:
        load_config(tiny_preset, [override])
    assert str(e.value) == message


def test_lora_alpha_is_a_float_and_disable_a_list(tiny_preset):
    cfg = load_config(tiny_preset, ["model.lora_alpha=16", "train.disable=gelu,norms"])
    assert cfg.model.lora_alpha == 16.0 and isinstance(cfg.model.lora_alpha, float)
    assert cfg.train.disable == ["gelu", "norms"]


def test_help_lists_every_key():
    text = help_text()
    for key in ("model.lora_alpha", "data.max_length", "train.disable", "generate.top_p", "eval.split", "output_dir"):
        assert any(line.startswith(key + " ") for line in text.splitlines()), key


def test_a_run_config_written_before_the_restructure_still_loads(root):
    """tests/data/config_v0.yaml: the tiny preset's config.yaml as medtune wrote it before the config got typed choices,
    bounds and new keys (commit 69e6539)."""
    from medtune.rundir import read_run_config

    cfg = read_run_config(root / "tests" / "data" / "config_v0.yaml")
    assert cfg.model.name == "random:tiny" and cfg.model.lora_alpha == 32.0 and cfg.eval.split == "test"
    assert cfg.train.disable == [] and cfg.data.phi == "error"  # new keys take their defaults


def test_a_config_with_three_mistakes_is_refused_once_naming_all_three(tmp_path):
    """The file, the overrides and the cross-key checks are one validation step: every problem in one message, each
    on its own line, so that fixing a config takes one run, not three."""
    from medtune.errors import MedtuneError
    from medtune.validate import load_config

    preset = tmp_path / "c.yaml"
    preset.write_text("train:\n  learning_rate: -1\n  max_step: 30\ndata:\n  val_fraction: 0.6\n  test_fraction: 0.5\n")
    with pytest.raises(MedtuneError) as e:
        load_config(preset, ["model.lora_r=big"])
    lines = str(e.value).splitlines()
    assert lines[0] == "4 problems:"
    assert any("'train.learning_rate' must be > 0" in ln for ln in lines)
    assert any("unknown config key 'train.max_step'; did you mean 'train.max_steps'?" in ln for ln in lines)
    assert any("'model.lora_r' must be int" in ln for ln in lines)
    assert any("val_fraction + data.test_fraction must be less than 1" in ln for ln in lines)
    with pytest.raises(MedtuneError, match=r"^config key 'train.learning_rate' must be > 0, got -1.0$"):
        load_config(None, ["train.learning_rate=-1"])  # one problem: one line, as before


def test_the_json_schema_is_current_and_covers_every_key(root):
    """configs/config.schema.json (editors validate and complete YAML configs with it) is what the code declares:
    regenerate it with `python scripts/config_schema.py`."""
    import json

    from medtune.config import help_rows, json_schema

    schema = json_schema()
    assert (root / "configs" / "config.schema.json").read_text() == json.dumps(schema, indent=2) + "\n"

    def keys(node, prefix=""):
        for name, prop in node["properties"].items():
            ref = prop.get("$ref")
            if ref:
                yield from keys(schema["$defs"][ref.rsplit("/", 1)[1]], f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    assert sorted(keys(schema)) == sorted(r[0] for r in help_rows())
    temperature = schema["$defs"]["GenerateConfig"]["properties"]["temperature"]
    assert temperature["maximum"] == 10 and temperature["description"]
    for preset in ("tiny-cpu", "gpt2-lora", "smollm2-lora"):
        text = (root / "configs" / f"{preset}.yaml").read_text()
        assert text.startswith("# yaml-language-server: $schema=config.schema.json\n")
