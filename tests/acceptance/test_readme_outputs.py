"""The README's `$ rtn query "..."` blocks are real output: each query, run on the demo warehouse,
prints exactly the lines the README shows (issue 15 point 9: no `shape:` line or dtype row left out).

    pytest tests/acceptance/test_readme_outputs.py                                    # the wheel's demo (slow)
    RTN_DEMO_WAREHOUSE=warehouse.duckdb pytest tests/acceptance/test_readme_outputs.py   # a demo built already
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import duckdb
import pytest

from rtn import cli

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^\$ (rtn query [^\n]+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_queries() -> list[tuple[str, list[str]]]:
    """Returns (the rtn query arguments, the output lines) of every `$ rtn query` block of the README."""
    return [(command, output.rstrip("\n").splitlines()) for command, output in BLOCK.findall(README.read_text())]


def test_the_readme_shows_query_output_as_the_tool_prints_it():
    blocks = readme_queries()
    assert len(blocks) >= 4
    for command, lines in blocks:
        assert lines[0].startswith("┌") and lines[2].startswith("╞") and lines[-1].startswith("└"), command
        assert not any(line.startswith("shape:") for line in lines), command


@pytest.fixture(scope="module")
def demo(request) -> Path:
    given = os.environ.get("RTN_DEMO_WAREHOUSE")
    return Path(given) if given else request.getfixturevalue("demo_warehouse")


@pytest.mark.parametrize(("command", "lines"), readme_queries(), ids=lambda v: v[:60] if isinstance(v, str) else "")
def test_each_readme_query_prints_the_readme_output_on_the_demo(demo, command, lines, capsys):
    con = duckdb.connect(str(demo), read_only=True)
    runs = {row[0] for row in con.execute("select run_id from runs").fetchall()}
    con.close()
    # the random-weights family is ingested by hand (the README says how); its rows are checked when present
    missing = {word for line in lines for word in re.findall(r"[│┆] (random-\S+) ", line)} - runs
    if missing:
        pytest.skip(f"the warehouse lacks run(s) {sorted(missing)}")
    args = shlex.split(command)[1:]
    assert cli.main([*args, "--warehouse", str(demo)]) == 0
    assert capsys.readouterr().out.rstrip("\n").splitlines() == lines
