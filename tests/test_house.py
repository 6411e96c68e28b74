"""The house's structure (tools/house.py): imports flow one way through the layers with no circle, one function picks
a layer's code, the linter's rules hold, and the project speaks only of itself."""
import ast
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import house  # noqa: E402


def test_imports_go_down_the_layers_without_circles():
    edges, layers = house.graph()
    assert house.violations(edges, layers) == [] and house.circles(edges) == []
    project = {m for m in edges if not m.startswith("kernels.")}
    for name in (m for m in edges if m.startswith("kernels.")):  # kernels stand on the format modules alone
        assert set(edges[name]) - {m for m in edges if m.startswith("kernels.")} <= {"quantizers.format",
                                                                                    "quantizers.hadamard"}, name
    assert {m for m in project if any(t.startswith("kernels.") for t in edges[m])} == {"quantizers.core"}


def test_the_checker_sees_a_circle_and_an_upward_import():
    edges = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {}}
    assert house.circles(edges) == [["a", "b", "c", "a"]]
    layers = {"a": "kernels", "b": "layers", "c": "bottom", "d": "methods"}
    assert house.violations({"a": {"b": 4}, "d": {"d": 1}}, layers) == ["a (kernels) imports b (layers) at line 4"]


def test_one_function_picks_a_layers_code():
    """Only quantizers/core.py asks whether torch.compile is tracing, and only its code_path() chooses a path."""
    askers = [p for p in house.modules().values() if "is_compiling" in open(os.path.join(ROOT, p)).read()]
    assert askers == [os.path.join("quantizers", "core.py")]
    tree = ast.parse(open(os.path.join(ROOT, "quantizers", "core.py")).read())
    users = {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
             for n in ast.walk(f) if isinstance(n, ast.Attribute) and n.attr == "is_compiling"}
    assert users == {"code_path"}


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is a tool dependency (requirements-tools.txt)")
def test_the_linter_finds_nothing():
    r = subprocess.run(["ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


PROCESS = re.compile(r"\b(sessions?|this run|last time|(an|the|this|open) issues?)\b|\.\./shared|\.dev/", re.I)


def test_the_project_speaks_only_of_itself():
    """No word of how it was built ("session", "issue", "this run", "last time") and no path outside the repository
    in code, README or results."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for path in files:
        if path.endswith((".py", ".md", ".sh", ".txt", ".json", ".log", ".toml", ".ini")) and "fixtures" not in path \
                and path != "tests/test_house.py":
            text = open(os.path.join(ROOT, path), errors="replace").read().replace("start_new_session", "")
            found += [f"{path}: {m.group(0)}" for m in PROCESS.finditer(text)]
    assert found == []
