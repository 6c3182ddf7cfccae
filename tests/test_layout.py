"""The package's shape, enforced: where MLflow may be used, no import cycles, no private names
across modules, every shared string defined once (tracking/keys.py)."""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "cxrstudy"
# the subpackages that may talk to MLflow: run helpers and the tracked body of each entry point
MLFLOW_HOMES = ("cxrstudy/tracking/", "cxrstudy/runs/")


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(path: Path, top_level_only: bool):
    """(imported module, [names]) for each import in the file."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # include `if TYPE_CHECKING`-free try/except bodies at top level too
        extra = []
        for n in tree.body:
            if isinstance(n, ast.Try):
                extra += n.body
        nodes = list(nodes) + extra
    for n in nodes:
        if isinstance(n, ast.Import):
            for a in n.names:
                yield a.name, []
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            yield n.module, [a.name for a in n.names]


def test_the_tree_follows_the_data_flow():
    for step in ("data/sources", "data/split.py", "data/cache.py", "data/loader.py", "train/loop.py",
                 "train/methods.py", "tracking/registry.py", "tracking/keys.py", "evaluate/metrics.py",
                 "evaluate/compare.py", "runs/train.py", "runs/evaluate.py", "runs/compare.py"):
        assert (PKG / step).exists(), step
    flat = sorted(p.name for p in PKG.glob("*.py"))
    assert flat == ["__init__.py", "errors.py", "hospitals.py", "labels.py", "params.py"], flat


# the package's stages in the order the data flows through them: a module may import its own stage
# and earlier ones, never a later one (evaluation may use training's inference, not the reverse)
STAGES = ("data", "train", "tracking", "evaluate", "runs")


def test_imports_run_one_way_along_the_stages():
    """Imports inside functions count too: training that climbs into evaluate/ (or tracking/, runs/)
    to validate is the circle this guards against."""
    offenders = []
    for mod, path in _modules():
        parts = mod.split(".")
        if len(parts) < 2 or parts[1] not in STAGES:
            continue
        mine = STAGES.index(parts[1])
        for name, _ in _imports(path, top_level_only=False):
            target = name.split(".")
            if target[0] == "cxrstudy" and len(target) > 1 and target[1] in STAGES[mine + 1:]:
                offenders.append(f"{mod} ({parts[1]}/) imports {name} ({target[1]}/ comes later)")
    assert not offenders, offenders


def test_the_stage_rule_sees_an_import_inside_a_function(tmp_path):
    """The rule's reader finds a late import hidden in a function body (what a circle hides behind)."""
    f = tmp_path / "m.py"
    f.write_text("def validate():\n    from cxrstudy.evaluate.metrics import select_threshold\n")
    assert ("cxrstudy.evaluate.metrics", ["select_threshold"]) in list(_imports(f, top_level_only=False))


def test_only_tracking_and_runs_import_mlflow():
    offenders = []
    for mod, path in _modules():
        rel = str(path.relative_to(ROOT))
        for name, _ in _imports(path, top_level_only=False):
            if (name == "mlflow" or name.startswith("mlflow.")) and not rel.startswith(MLFLOW_HOMES):
                offenders.append(f"{rel} imports {name}")
    assert not offenders, offenders


def evaluate_io_imports() -> list[str]:
    """What evaluate/ imports from tracking/ (but the shared strings of keys.py) or runs/, at any level."""
    offenders = []
    for mod, path in _modules():
        if not mod.startswith("cxrstudy.evaluate"):
            continue
        for name, names in _imports(path, top_level_only=False):
            full = [f"{name}.{n}" for n in names] or [name]
            offenders += [f"{mod} imports {f}" for f in full
                          if f.startswith(("cxrstudy.runs", "cxrstudy.tracking")) and f != "cxrstudy.tracking.keys"]
    return offenders


def test_the_statistics_layer_does_no_mlflow_io():
    """evaluate/ computes on predictions and frames; loading models from the registry and caching
    predictions (MLflow I/O) is runs/'s or tracking/'s job."""
    assert not evaluate_io_imports()


def test_the_statistics_check_sees_imports_inside_functions(tmp_path, monkeypatch):
    bad = tmp_path / "cxrstudy" / "evaluate" / "late.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f():\n    from cxrstudy.tracking.registry import load_trained\n    return load_trained\n")
    monkeypatch.setattr(__import__(__name__), "PKG", tmp_path / "cxrstudy")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert evaluate_io_imports() == ["cxrstudy.evaluate.late imports cxrstudy.tracking.registry.load_trained"]


def test_the_analysis_talks_to_mlflow_in_one_module():
    offenders = [f"{path.relative_to(ROOT)} imports {name}" for path in sorted((ROOT / "analysis").rglob("*.py"))
                 if path.name != "queries.py" for name, _ in _imports(path, top_level_only=False)
                 if name == "mlflow" or name.startswith("mlflow.")]
    assert not offenders, offenders


def test_the_library_never_imports_the_analysis_package():
    offenders = [f"{mod} imports {name}" for mod, path in _modules()
                 for name, _ in _imports(path, top_level_only=False)
                 if name == "analysis" or name.startswith("analysis.")]
    assert not offenders, offenders


def test_no_import_cycles_between_modules():
    """Imports inside functions count too: a circle that only runs late is still a circle."""
    mods = dict(_modules())
    graph = {}
    for mod, path in mods.items():
        deps = set()
        for name, names in _imports(path, top_level_only=False):
            if not name.startswith("cxrstudy"):
                continue
            for n in names:  # `from cxrstudy.tracking import keys` imports the submodule
                if f"{name}.{n}" in mods:
                    deps.add(f"{name}.{n}")
            if name in mods and (not names or any(f"{name}.{n}" not in mods for n in names)):
                deps.add(name)
        deps.discard(mod)
        graph[mod] = deps
    # a package's __init__ importing its own submodules is how packages work, not a cycle; but a module
    # outside the package that imports the package runs that __init__, so it depends on those submodules
    init_subs = {mod: {d for d in deps if d.startswith(mod + ".")} for mod, deps in graph.items()}
    for mod in graph:
        graph[mod] = {d for d in graph[mod] if not d.startswith(mod + ".")}
    for mod in graph:
        graph[mod] |= {s for d in list(graph[mod]) if not mod.startswith(d + ".") for s in init_subs.get(d, ())}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, cycles


def test_no_private_names_imported_across_modules():
    offenders = []
    for root in (PKG, ROOT / "analysis", ROOT / "entrypoints"):
        for path in root.rglob("*.py"):
            for n in ast.walk(ast.parse(path.read_text())):
                if isinstance(n, ast.ImportFrom) and (n.level > 0 or (n.module or "").startswith(("cxrstudy", "analysis"))):
                    offenders += [f"{path.relative_to(ROOT)}: {a.name}" for a in n.names
                                  if a.name.startswith("_") and a.name != "__version__"]
    assert not offenders, offenders


def test_shared_strings_are_defined_once_in_keys():
    """Tag names appear as string literals only in tracking/keys.py (tests may spell them out)."""
    tag = re.compile(r"""["']cxrstudy[.:][a-z_]+["']""")
    offenders = []
    for root in (PKG, ROOT / "analysis", ROOT / "entrypoints", ROOT / "benchmarks"):
        for path in root.rglob("*.py"):
            if path == PKG / "tracking" / "keys.py":
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if tag.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_one_name_one_meaning_for_the_formerly_colliding_pairs():
    """Each of these names is defined in exactly one module of the package."""
    defined = {}
    for root in (PKG, ROOT / "analysis"):
        for path in root.rglob("*.py"):
            for n in ast.parse(path.read_text()).body:
                names = []
                if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                    names = [n.name]
                elif isinstance(n, ast.Assign):
                    names = [t.id for t in n.targets if isinstance(t, ast.Name)]
                for name in names:
                    defined.setdefault(name, []).append(str(path.relative_to(ROOT)))
    for name in ("find_finished", "find_trained", "train_command_line", "train_argv", "PREDICTION_COLUMNS",
                 "BALANCE_TITLES", "BALANCE_MODES", "pick_device"):
        assert len(defined.get(name, [])) <= 1, (name, defined.get(name))


def test_docstrings_point_at_the_protocol_in_the_repository():
    assert (ROOT / "docs" / "PROTOCOL.md").is_file()
    for root in (PKG, ROOT / "analysis", ROOT / "entrypoints"):
        for path in root.rglob("*.py"):
            text = path.read_text()
            assert "MLFLOW_NOTES" not in text, path
            for m in re.finditer(r"PROTOCOL\.md", text):
                before = text[max(0, m.start() - 5):m.start()]
                assert before.endswith("docs/"), f"{path}: cite docs/PROTOCOL.md"


def test_every_file_in_the_package_is_tracked_source_or_declared_package_data():
    """No stray files (``*.orig``, ``*.rej``, logs, notes) are tracked under cxrstudy/: each is a
    Python module or matches the package data that pyproject.toml ships."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "cxrstudy"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    tracked = [p for p in out.stdout.decode().split("\0") if p]
    assert tracked, "git ls-files found nothing under cxrstudy/"
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cxrstudy"]
    stray = [p for p in tracked
             if not p.endswith(".py") and not any(fnmatch.fnmatch(p, f"cxrstudy/{g}") for g in data)]
    assert not stray, f"tracked files under cxrstudy/ that are neither modules nor package data: {stray}"
