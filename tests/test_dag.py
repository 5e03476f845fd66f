"""dvc.yaml cannot go stale: every module a stage runs is one of its deps, and no other module is.

Each stage's modules are derived from its pipeline script: the functions it calls in our modules
(only those functions' imports, so one module of stage functions does not tie every stage to
every module), then everything those modules import, function-local imports included, and the
non-Python files they name (explorer.js).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "latentstudy"


def module_file(name: str) -> Path | None:
    """The file of a latentstudy module or package, or None for anything else."""
    if name != "latentstudy" and not name.startswith("latentstudy."):
        return None
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports(nodes: list[ast.AST]) -> set[Path]:
    """Our module files imported anywhere under the nodes, with the packages on their way."""
    names = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    files = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:i]))
            if path is not None:
                files.add(path)
    return files


def resources(path: Path) -> set[Path]:
    """What a module names in a string and runs or reads at run time: a package file (explorer.js)
    or a module started as a process (`python -m latentstudy.cli worker`)."""
    names = {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
             and isinstance(n.value, str)}
    files = {PACKAGE / name for name in names if re.fullmatch(r"[\w.-]+\.(js|css|html)", name)
             and (PACKAGE / name).is_file()}
    return files | {module_file(name) for name in names if module_file(name)}


def closure(start: set[Path], expanded: frozenset[Path] = frozenset()) -> set[Path]:
    """Everything the start files import, transitively; files in `expanded` are not read again."""
    seen, todo = set(expanded), list(start - expanded)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        if path.suffix == ".py":
            tree = ast.parse(path.read_text())
            todo.extend(imports([tree]) | resources(path))
    return seen


def stage_modules(script: Path) -> set[Path]:
    """The script's imports, narrowed to the functions it calls in the modules it imports from."""
    tree = ast.parse(script.read_text())
    direct = imports([tree])
    calls = {(n.func.value.id, n.func.attr) for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)}
    start: set[Path] = set()
    for path in direct:
        module = ast.parse(path.read_text())
        called = {attr for owner, attr in calls if owner == path.stem}
        top = [n for n in module.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        funcs = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name in called]
        if called and funcs:
            start |= imports(top + funcs)
        else:
            start |= imports([module]) | resources(path)
    return closure(start, frozenset(direct)) | direct


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", list(stages()))
def test_dvc_yaml_lists_exactly_the_modules_a_stage_runs(name):
    stage = stages()[name]
    script = ROOT / re.search(r"python (pipeline/\w+\.py)", stage["cmd"]).group(1)
    deps = {ROOT / (d if isinstance(d, str) else next(iter(d))) for d in stage["deps"]}
    needed = stage_modules(script)
    listed = {d for d in deps if d.is_relative_to(PACKAGE)}
    missing = sorted(str(p.relative_to(ROOT)) for p in needed - listed)
    extra = sorted(str(p.relative_to(ROOT)) for p in listed - needed)
    assert not missing, f"dvc.yaml stage {name} runs but does not list: {missing}"
    assert not extra, f"dvc.yaml stage {name} lists modules it does not run: {extra}"
    assert PACKAGE not in deps and SRC not in deps, "list modules, not the whole package"
    assert script in deps


def test_the_search_does_not_rerun_when_the_explorer_changes():
    search = stage_modules(ROOT / "pipeline" / "search.py")
    assert PACKAGE / "explorer.py" not in search and PACKAGE / "report.py" not in search


def test_the_derivation_sees_function_local_imports(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("from latentstudy import stages\n\ndef main():\n    stages.evaluate()\n")
    got = stage_modules(script)
    assert PACKAGE / "pca.py" in got  # imported inside stages.evaluate
    assert PACKAGE / "report.py" not in got  # imported inside stages.report only
