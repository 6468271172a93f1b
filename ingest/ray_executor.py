"""`rtn ingest --executor ray`: one Ray Core task per missing checkpoint; the driver writes each result as it arrives.

    pip install 'rtn[ray]'
    rtn ingest --model EleutherAI/pythia-410m --checkpoints all --executor ray --gpus-per-task 1   # $RAY_ADDRESS or local

The driver validates everything and prepares the corpus once (`ray.put`); tasks load, hash and extract
one checkpoint each and return tables; only the driver opens the warehouse, through the one writer, so
resuming and idempotency are exactly those of a local ingest. A task failing with an RtnError (bad
input) is not retried; a lost worker is, up to MAX_RETRIES times. Every node needs rtn installed and the
checkpoints reachable (a shared HF_HOME, or a cache per node).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rtn.errors import RtnError
from rtn.ingest import sources
from rtn.ingest.config import IngestConfig
from rtn.ingest.pipeline import _summary, checkpoint_tables, commit_checkpoint, plan_ingest

MAX_RETRIES = 2    # re-runs of a task whose worker died (not of one that raised)


@dataclass
class RayOptions:
    address: str | None = None    # a running cluster ("auto", "HOST:6379"); None: $RAY_ADDRESS, else a local Ray
    gpus_per_task: float = 0      # GPUs each task reserves (1 = a GPU per checkpoint)
    cpus_per_task: float = 1      # CPUs each task reserves; also its torch threads


def _ingest_one(ref, data, config: IngestConfig, adapter, layer: int, cpus: float):
    """Runs on a Ray worker: returns one checkpoint's CheckpointResult."""
    torch.set_num_threads(max(1, int(cpus)))     # Ray gives a task its CPUs, not torch: match them
    return checkpoint_tables(ref, data, config, adapter, layer, sources.pick_device(config.device))


def _connect(options: RayOptions):
    try:
        import ray
    except ImportError as err:
        raise RtnError("--executor ray needs Ray: pip install 'rtn[ray]'") from err
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    try:
        # "local", not None: None would join whatever cluster /tmp/ray/ray_current_cluster names, even a dead one
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as err:
        raise RtnError(f"cannot join the Ray cluster at {address}: {str(err).splitlines()[0]} (on a cluster with "
                       f"token authentication, export RAY_AUTH_MODE=token and the head's RAY_AUTH_TOKEN too)") from err
    return ray


def _check_resources(ray, options: RayOptions, address: str | None) -> None:
    """Raises a one-line RtnError when the cluster cannot ever run a task (Ray would leave it pending, silently)."""
    have = ray.cluster_resources()
    where = f"the Ray cluster at {address}" if address else "the local Ray"
    if options.gpus_per_task > have.get("GPU", 0):
        raise RtnError(f"--gpus-per-task {options.gpus_per_task:g}: {where} has {have.get('GPU', 0):g} GPU(s); "
                       f"use --gpus-per-task 0 or a cluster with GPUs")
    if options.cpus_per_task > have.get("CPU", 0):
        raise RtnError(f"--cpus-per-task {options.cpus_per_task:g}: {where} has {have.get('CPU', 0):g} CPU(s)")


def ingest_ray(config: IngestConfig, path: Path, options: RayOptions, log=print) -> dict:
    """Ingests the run's missing checkpoints as Ray tasks into the warehouse at `path`; returns a summary."""
    path = Path(path)
    if options.gpus_per_task < 0 or options.cpus_per_task <= 0:
        raise RtnError("--gpus-per-task must be 0 or more and --cpus-per-task more than 0")
    if config.device == "cuda" and not options.gpus_per_task:
        raise RtnError("--device cuda with --executor ray needs --gpus-per-task (a task sees only the GPUs it asks for)")
    ray = _connect(options)
    try:
        address = options.address or os.environ.get("RAY_ADDRESS") or None
        _check_resources(ray, options, address)
        # the driver needs no GPU of its own: --device cuda is checked in each task, on the GPU it was given
        plan = plan_ingest(dataclasses.replace(config, device="auto") if config.device == "cuda" else config, path, log)
        if not plan.todo:
            log(f"run {plan.run_id}: all {len(plan.refs)} checkpoints already ingested; nothing to do")
            return {"run_id": plan.run_id, "ingested": 0, "skipped": len(plan.refs)}
        started = time.perf_counter()
        task = ray.remote(_ingest_one).options(num_cpus=options.cpus_per_task, num_gpus=options.gpus_per_task,
                                               max_retries=MAX_RETRIES, retry_exceptions=False)
        data = ray.put(plan.data)     # the corpus goes to the object store once, not once per task
        task_config = dataclasses.replace(plan.config, device=config.device)   # resolved paths, the asked device
        pending = {task.remote(ref, data, task_config, plan.adapter, plan.layer, options.cpus_per_task): ref
                   for ref in plan.todo}
        log(f"run {plan.run_id}: {len(pending)} checkpoint task(s) submitted to {address or 'a local Ray'}")
        while pending:
            (finished,), _ = ray.wait(list(pending), num_returns=1)
            ref = pending.pop(finished)
            try:
                result = ray.get(finished)
            except ray.exceptions.RayTaskError as err:
                for other in pending:
                    ray.cancel(other, force=True)
                cause = getattr(err, "cause", None)
                if isinstance(cause, RtnError):
                    raise RtnError(str(cause)) from None
                raise RtnError(f"step {ref.step}: the Ray task failed: {str(cause or err).splitlines()[0]}") from err
            commit_checkpoint(path, plan, ref, result, log)
            print(f"ingest {plan.run_id}: step {ref.step} written ({len(pending)} left)", file=sys.stderr, flush=True)
        return _summary(plan, started, path, log)
    finally:
        ray.shutdown()
