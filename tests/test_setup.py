"""The set-up paths agree with each other: README commands, Makefile, .ci/run, environment.yml and pyproject.toml.

`conda env create` itself cannot run on an offline CI machine (no conda-forge), so these tests pin down that
environment.yml installs exactly what the tested Makefile path installs, in the same order.
"""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def makefile_torch_spec() -> str:
    return re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    block = (ROOT / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert "make test" in ci
    assert re.search(r"^test: .*\n\t.*pytest .*tests notebooks", (ROOT / "Makefile").read_text(), re.M)


def test_environment_yml_installs_what_the_makefile_installs():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "pip" in deps
    # the CPU torch pin first (a bare torch requirement pulls a CUDA build), then the package with its dev extra
    assert pip == [makefile_torch_spec(), "-e .[dev]"]
    assert Version(python.split("=", 1)[1]) in SpecifierSet(pyproject()["project"]["requires-python"])


def test_pinned_torch_is_inside_the_package_range_and_the_range_stays_wide():
    torch_req = next(Requirement(r) for r in pyproject()["project"]["dependencies"] if r.startswith("torch"))
    pinned = Version(makefile_torch_spec().split("==")[1])
    assert torch_req.specifier.contains(pinned)
    assert torch_req.specifier.contains("2.1.0")  # Colab's preinstalled CUDA build must be kept, not replaced
