"""Helpers of the wheel tests: the commands they run and the user's shadowing modules they plant."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A user's own modules with rtn's old top-level names, all broken: rtn must never import them.
SHADOWS = ("sql/__init__.py", "ingest/__init__.py", "analyses/__init__.py", "app.py")


def run(*args, cwd=None, timeout=900, check=True, **kw) -> subprocess.CompletedProcess:
    """Runs a command; returns the CompletedProcess, raising with its stderr's tail when it fails and check is set."""
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def has_setuptools() -> bool:
    try:
        import setuptools  # noqa: F401
        return True
    except ImportError:
        return False
