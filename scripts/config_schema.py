"""Write configs/config.schema.json, the JSON Schema of a medtune config file (medtune.config.json_schema);
tests/test_config.py checks that the file is current."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medtune.config import json_schema  # noqa: E402

SCHEMA = ROOT / "configs" / "config.schema.json"


def text() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA.write_text(text())
    print(f"wrote {SCHEMA}")
