"""The lock (constraints-cpu.txt, made by scripts/lock.sh) and pyproject.toml agree: every dependency and dev extra
that pyproject.toml asks for is pinned in the lock to a version its range admits, every line is an exact pin, and
the torch that CI and the README install is the locked one. A dependency added or a range moved without refreshing
the lock fails here, not on a fresh machine."""

import re

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


@pytest.fixture(scope="module")
def lock(root) -> dict[str, Version]:
    pins = {}
    for line in (root / "constraints-cpu.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def wanted(root) -> list[Requirement]:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


def test_every_requirement_is_locked_inside_its_range(root, lock):
    for req in wanted(root):
        name = canonicalize_name(req.name)
        assert name in lock, f"{req} is not in constraints-cpu.txt: run bash scripts/lock.sh"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"constraints-cpu.txt pins {req.name}=={lock[name]}, outside pyproject.toml's {req}: "
            "run bash scripts/lock.sh"
        )


def test_ci_and_readme_install_with_the_lock(root, lock):
    ci = (root / ".ci" / "run").read_text()
    readme = (root / "README.md").read_text()
    for text in (ci, readme):
        torch_pin = re.search(r"pip install (?:-q )?(?:-c constraints-cpu\.txt )?torch==([\d.]+)", text)
        assert torch_pin and Version(torch_pin[1]) == Version(lock["torch"].base_version), torch_pin
        assert '-c constraints-cpu.txt -e ".[dev]"' in text
