"""Scale-out paths end with the sequential run's tables: Parquet shards merged by `rtn merge`, and Ray tasks.

    pytest tests/integration/test_scale_out.py            # the Ray tests skip without the rtn[ray] extra
"""
from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from conftest import kill_cli_at_line, make_corpus_docs, run_cli, save_checkpoint_family, table_contents

STEPS = (0, 1, 2)
# Columns that may differ from the sequential run in the last float bits (a task's torch thread count changes the
# summation order); every other column of every table must be equal exactly.
REL_TOL = 1e-6


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("scale_family")
    ckpts = save_checkpoint_family(root / "ckpts", steps=STEPS)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(make_corpus_docs(120)) + "\n")
    args = ["ingest", "--model", ckpts, "--checkpoints", "all", "--corpus", corpus, "--tokens", 512, "--seq-len", 32,
            "--samples", 96, "--head-layers", 1, "--run", "r"]
    reference = root / "sequential.duckdb"
    run_cli(*args, "--warehouse", reference)
    return {"args": [str(a) for a in args], "reference": reference, "root": root}


def _values_close(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_values_close(x, y) for x, y in zip(a, b))
    return a == b


def inexact_columns(path, reference) -> set[str]:
    """Returns the table.column names whose values differ from the reference's at all (asserting they agree to
    REL_TOL); equal tables and row counts are asserted too."""
    mine, theirs = table_contents(path), table_contents(reference)
    assert sorted(mine) == sorted(theirs)
    con = duckdb.connect(str(reference), read_only=True)
    inexact = set()
    for table in theirs:
        assert len(mine[table]) == len(theirs[table]), table
        columns = [r[0] for r in con.execute("select column_name from information_schema.columns where table_name = ? "
                                             "order by ordinal_position", [table]).fetchall()
                   if r[0] not in ("ingested_at", "created_at", "stage_seconds")]
        for row, other in zip(mine[table], theirs[table]):
            for column, a, b in zip(columns, row, other):
                if a != b:
                    assert _values_close(a, b), f"{table}.{column}: {a!r} != {b!r}"
                    inexact.add(f"{table}.{column}")
    con.close()
    return inexact


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "rtn.cli", *map(str, args)]


# ---- shards: SLURM-style array jobs ----------------------------------------------------------------------------

def test_shards_of_separate_processes_merge_to_the_sequential_tables(tmp_path, family):
    shard_dir = tmp_path / "shards"
    jobs = [subprocess.Popen(_cli(*family["args"], "--shard-dir", shard_dir, "--checkpoint-index", index),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for index in range(len(STEPS))]
    for job in jobs:
        assert job.wait(timeout=600) == 0, job.stderr.read()[-2000:]
    # an array job killed mid-write: a step folder without its checkpoints marker
    unfinished = shard_dir / "neuron_stats" / "run_id=r" / "step=7"
    shutil.copytree(shard_dir / "neuron_stats" / "run_id=r" / "step=2", unfinished)

    path = tmp_path / "merged.duckdb"
    out = run_cli("merge", shard_dir, "--warehouse", path).stdout.splitlines()
    assert [line for line in out if line.startswith("skipping")] == [
        f"skipping run r step 7 in {shard_dir}: no checkpoints shard, its job did not finish"]
    assert out[-1].startswith(f"merged {len(STEPS)} checkpoint(s) from {shard_dir}")
    assert inexact_columns(path, family["reference"]) == set()     # shards are the same code, one process each

    before = table_contents(path, ignore=())
    again = run_cli("merge", shard_dir, "--warehouse", path).stdout.splitlines()
    assert again[-1].startswith(f"merged 0 checkpoint(s) from {shard_dir}")
    assert f"({len(STEPS)} already there, 1 unfinished skipped)" in again[-1]
    assert table_contents(path, ignore=()) == before                # not even ingested_at moves

    con = duckdb.connect()    # DuckDB reads the shard folder directly, as the README says
    steps = con.execute(f"select distinct step from read_parquet('{shard_dir}/ablation_deltas/*/*/*.parquet', "
                        "hive_partitioning = true) order by step").fetchall()
    assert steps == [(s,) for s in STEPS]


def test_shard_index_out_of_range_and_a_folder_without_shards_are_one_line(tmp_path, family):
    proc = run_cli(*family["args"], "--shard-dir", tmp_path / "s", "--checkpoint-index", 3, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "rtn: error: --checkpoint-index 3 is out of range: the run has 3 checkpoints (0..2)"]
    proc = run_cli("merge", tmp_path, "--warehouse", tmp_path / "w.duckdb", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [(f"rtn: error: {tmp_path} holds no shards (no checkpoints/ folder); "
                                                 "write them with `rtn ingest ... --shard-dir`")]
    assert not (tmp_path / "w.duckdb").exists()


# ---- Ray: a two-node cluster on this machine ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """Yields the address of a head and a worker node (one CPU each) started here with token authentication, the
    token exported to the tests' drivers as the README says; stops exactly those processes."""
    pytest.importorskip("ray", reason="the rtn[ray] extra is not installed")
    ray_bin = Path(sys.executable).parent / "ray"
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--num-gpus", "0", "--disable-usage-stats", "--block",
              "--object-store-memory", str(100 * 2**20)]
    head_only = ["--temp-dir", str(tmp_path_factory.mktemp("ray"))]   # logs and the cluster file, not /tmp/ray
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**os.environ, **auth, "RAY_USAGE_STATS_ENABLED": "0"}
    patch = pytest.MonkeyPatch()
    for key, value in auth.items():
        patch.setenv(key, value)
    nodes = [subprocess.Popen([ray_bin, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                               *head_only, *common], start_new_session=True, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait_for_nodes(address, 1)
        nodes.append(subprocess.Popen([ray_bin, "start", "--address", address, *common], start_new_session=True,
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for_nodes(address, 2)
        yield address
    finally:
        for node in reversed(nodes):    # each `ray start --block` stops its own node's processes on SIGTERM
            os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        patch.undo()


def _wait_for_nodes(address: str, n: int, timeout: float = 120) -> None:
    # in a fresh process: this one may have imported Ray before the token was exported, and Ray reads it once
    probe = (f"import ray, time; ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False)\n"
             f"deadline = time.monotonic() + {timeout}\n"
             f"while sum(node['Alive'] for node in ray.nodes()) < {n} and time.monotonic() < deadline:\n"
             f"    time.sleep(0.2)\n"
             f"print(sum(node['Alive'] for node in ray.nodes()))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout + 60,
                          check=False)
    assert proc.stdout.strip().splitlines()[-1:] == [str(n)], f"the Ray cluster at {address}: {proc.stderr[-1500:]}"


@pytest.mark.ray
def test_ray_ingest_killed_mid_way_resumes_to_the_sequential_tables(tmp_path, family, ray_cluster):
    path = tmp_path / "ray.duckdb"
    args = [*family["args"], "--executor", "ray", "--ray-address", ray_cluster, "--warehouse", path]
    # the driver prints "step N written (K left)" after each commit: the first such line is a moment mid-way
    done_at_kill = kill_cli_at_line(args, path, marker=" written (")
    assert 1 <= done_at_kill < len(STEPS), "the kill should land mid-way"

    resumed = run_cli(*args).stdout.splitlines()
    assert resumed[-1].startswith(f"run r: ingested {len(STEPS) - done_at_kill} checkpoint(s)")
    assert inexact_columns(path, family["reference"]) <= INEXACT_UNDER_RAY


# A Ray task runs torch with one thread (--cpus-per-task 1); the sequential run with this machine's two. Float
# sums then differ in the last bits; these columns are compared to REL_TOL, every other one exactly.
INEXACT_UNDER_RAY = set()


@pytest.mark.ray
def test_ray_gpus_asked_of_a_cluster_without_gpus_fail_within_seconds(tmp_path, family, ray_cluster):
    started = time.monotonic()
    proc = run_cli(*family["args"], "--executor", "ray", "--ray-address", ray_cluster, "--gpus-per-task", 1,
                   "--warehouse", tmp_path / "w.duckdb", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"rtn: error: --gpus-per-task 1: the Ray cluster at {ray_cluster} has 0 GPU(s); "
        "use --gpus-per-task 0 or a cluster with GPUs")
    assert time.monotonic() - started < 30
    assert not (tmp_path / "w.duckdb").exists()


@pytest.mark.ray
def test_ray_driver_without_the_clusters_token_fails_in_one_line(tmp_path, family, ray_cluster):
    proc = run_cli(*family["args"], "--executor", "ray", "--ray-address", ray_cluster, "--warehouse",
                   tmp_path / "w.duckdb", check=False, env={"RAY_AUTH_TOKEN": "0" * 64})
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"rtn: error: cannot join the Ray cluster at {ray_cluster}: ") and "RAY_AUTH_TOKEN" in last


@pytest.mark.gpu
@pytest.mark.ray
def test_ray_fans_two_checkpoints_out_to_a_gpu_each(tmp_path, family):
    torch = pytest.importorskip("torch")
    pytest.importorskip("ray", reason="the rtn[ray] extra is not installed")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    # --device auto on both: cuda here and in a task given a GPU (a task on the CPU would compute in float64, not
    # float32, and miss the reference by more than REL_TOL)
    args = [*family["args"], "--checkpoints", "step0,step1"]
    reference, path = tmp_path / "cuda.duckdb", tmp_path / "ray_gpu.duckdb"
    run_cli(*args, "--warehouse", reference)
    out = run_cli(*args, "--executor", "ray", "--gpus-per-task", 1, "--warehouse", path,
                  env={"RAY_ADDRESS": ""}).stdout.splitlines()   # a local Ray with this machine's GPUs
    assert out[-1].startswith("run r: ingested 2 checkpoint(s)")
    inexact_columns(path, reference)      # every column equal, floats to REL_TOL (the same GPU kernels)
