"""Print the config reference of docs/configuration.md (every key, its type, default and help) from the config's
field declarations: `python scripts/config_table.py`. The same text, as plain lines: `medtune train --help-config`."""

from medtune.config import help_rows


def main() -> None:
    print("| key | type | default | what |\n| --- | --- | --- | --- |")
    for key, typ, default, help_ in help_rows():
        cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        print(f"| `{key}` | {cell(typ)} | `{cell(default)}` | {cell(help_)} |")


if __name__ == "__main__":
    main()
