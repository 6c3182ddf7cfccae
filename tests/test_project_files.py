"""The project's own files agree with each other."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_conda_yaml_lists_exactly_pyprojects_dependencies():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_reqs = [p for p in pip_section if not p.startswith("-e")]
    assert sorted(map(_norm, conda_reqs)) == sorted(map(_norm, deps)), (
        "conda.yaml's pip list and pyproject.toml's dependencies have drifted apart")


def test_mlproject_is_generated_from_the_entry_points():
    from cxrstudy.tools.mlproject import render

    assert (ROOT / "MLproject").read_text() == render(), "run `python -m cxrstudy.tools.mlproject` to regenerate MLproject"


def test_mlproject_names_conda_env_and_the_entry_points():
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    assert spec["conda_env"] == "conda.yaml"
    for name in ("main", "preprocess", "train", "evaluate", "compare", "analyze"):
        assert name in spec["entry_points"], name
        assert f"entrypoints/{name}.py" in spec["entry_points"][name]["command"]
