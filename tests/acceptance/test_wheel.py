"""rtn as a user installs it: a wheel in a fresh venv puts only `rtn` into site-packages, and its commands work there.

    pytest tests/acceptance/test_wheel.py     # builds the wheel and a venv (torch from the local file), runs the demo
"""
from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import time
import urllib.request

from rtn_wheel import REPO, SHADOWS, run


def test_the_wheel_puts_only_rtn_into_site_packages(wheel_venv):
    record = next(wheel_venv.glob("lib/python*/site-packages/rtn-*.dist-info/RECORD"))
    top = {row[0].split("/")[0] for row in csv.reader(io.StringIO(record.read_text()))}
    assert top - {".."} == {"rtn", record.parent.name}           # ../../bin/rtn is the console script
    site = record.parent.parent
    assert (site / "rtn" / "app.py").is_file() and not (site / "rtn" / "app.py").is_symlink()
    assert {p.name for p in (site / "rtn" / "sql").glob("*.sql")} == {p.name for p in (REPO / "sql").glob("*.sql")}


def test_generic_names_are_not_importable_after_install(wheel_venv, tmp_path):
    code = ("import importlib\n"
            "for name in ('ingest', 'sql', 'analyses', 'app'):\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ModuleNotFoundError:\n"
            "        continue\n"
            "    raise SystemExit(f'{name} is importable')\n"
            "import rtn.ingest.pipeline, rtn.sql, rtn.analyses\n"
            "print('ok')\n")
    assert run(wheel_venv / "bin" / "python", "-c", code, cwd=tmp_path).stdout.strip() == "ok"


def test_demo_query_and_app_work_from_the_wheel_beside_shadowing_folders(wheel_venv, demo_warehouse):
    # demo_warehouse (tests/acceptance/conftest.py) was built by this venv's `rtn demo`, its analyses in a child
    # process, run in a folder that holds broken sql/, ingest/, analyses/ and app.py of the user's own
    folder = demo_warehouse.parent
    assert all((folder / shadow).exists() for shadow in SHADOWS)
    assert "demo ready" in (folder / "demo.out").read_text()
    rtn = wheel_venv / "bin" / "rtn"
    counted = run(rtn, "query", "select count(*) as n from ablation_deltas where run_id = 'demo'", "--format", "csv",
                  "--warehouse", demo_warehouse.name, cwd=folder)
    assert counted.stdout.split() == ["n", str(13 * 256 * 3)]
    analysed = run(rtn, "query", "select count(*) from analysis_runs where run_id = 'demo'", "--format", "csv",
                   "--warehouse", demo_warehouse.name, cwd=folder)
    assert analysed.stdout.split()[-1] == "1"
    planted = run(rtn, "query", "select count(*) as n, count(distinct step) as steps from ablation_deltas "
                  "where run_id = 'planted'", "--format", "csv", "--warehouse", demo_warehouse.name, cwd=folder)
    assert planted.stdout.split() == ["n,steps", f"{256 * 3},1"]     # the planted run (rtn/demo/planted.py) too
    assert "run 'planted'" in (folder / "demo.out").read_text()
    page = ("from streamlit.testing.v1 import AppTest\nimport pathlib, rtn\n"
            "at = AppTest.from_file(str(pathlib.Path(rtn.__file__).parent / 'app.py'), default_timeout=120)\n"
            "at.query_params['page'] = 'Influence'\nat.run()\n"
            "assert not at.exception, at.exception\nprint([t.value for t in at.title])\n")
    shown = run(wheel_venv / "bin" / "python", "-c", page, cwd=folder,
                env={**os.environ, "RTN_WAREHOUSE": str(demo_warehouse)})
    assert shown.stdout.strip().splitlines()[-1] == "['Influence']"
    port = _free_port()
    server = subprocess.Popen([str(rtn), "app", "--warehouse", demo_warehouse.name, "--port", str(port)], cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _healthy(f"http://127.0.0.1:{port}/_stcore/health", server), "rtn app did not come up"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str, server: subprocess.Popen, timeout_s: float = 90) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode().strip() == "ok"
        except OSError:
            time.sleep(0.5)
    return False
