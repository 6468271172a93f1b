"""The package's shape: one import name, no import cycles, no torch behind the views, analyses or app.

    pytest tests/unit/test_package.py
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Where each subpackage's source lives (pyproject.toml's package-dir).
PACKAGE_DIRS = {"rtn": REPO / "rtn", "rtn.ingest": REPO / "ingest", "rtn.analyses": REPO / "analyses",
                "rtn.sql": REPO / "sql"}


def project_modules() -> dict[str, Path]:
    """Returns {dotted module name: source file} of every module of the rtn package."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            if path.is_symlink() or ".venv" in path.parts:   # rtn/app.py links to the Streamlit script
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if package == "rtn" and parts and parts[0] in ("ingest", "analyses", "sql"):
                continue
            modules[".".join((package, *parts))] = path
    modules["app"] = REPO / "app.py"
    return modules


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """Returns the project modules `module` imports anywhere in its file, function bodies included."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known and name != module}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, name, set(modules)) for name, path in modules.items()}


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "rtn.ingest.pipeline" in graph and "rtn.ingest.ablation" in graph["rtn.ingest.extract"]
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_cycle_check_finds_a_planted_cycle(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from rtn.bench import profile\n")   # function-level imports count too
    b.write_text("from rtn.demo.synthetic import generate_corpus\n")
    known = {"rtn.bench.profile", "rtn.demo.synthetic"}
    assert imports_of(a, "rtn.demo.synthetic", known) == {"rtn.bench.profile"}
    assert imports_of(b, "rtn.bench.profile", known) == {"rtn.demo.synthetic"}


def test_views_analyses_and_warehouse_never_load_torch():
    code = ("import sys\n"
            "import rtn.analyses, rtn.sql, rtn.warehouse, rtn.cli\n"
            "from rtn.analyses import geometry, group_ablation, group_spectra, modularity, regimes\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_app_never_loads_torch(tmp_path):
    code = ("import sys\n"
            "from streamlit.testing.v1 import AppTest\n"
            f"at = AppTest.from_file({str(REPO / 'app.py')!r}, default_timeout=60).run()\n"
            "assert at.title or at.error or at.info, 'the app rendered nothing'\n"
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))\n")
    env = {"RTN_WAREHOUSE": str(tmp_path / "none.duckdb"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_only_rtn_is_packaged():
    import tomllib
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(name == "rtn" or name.startswith("rtn.") for name in config["packages"])
    assert "py-modules" not in config
    assert (REPO / "rtn" / "app.py").resolve() == (REPO / "app.py").resolve()
