"""Louvain modularity of neuron-group activation graphs, with a permutation test.

    from rtn.analyses import modularity
    tables = modularity.compute(con, "demo")   # {"analysis_modularity": ..., "analysis_communities": ...}

A group's graph (the `modularity_edges` view) has the group's neurons as nodes and |Pearson r|
of their rare-target activations as edge weights; it is built here from the layer's activations
(`rare_activations`) as the null graphs are, and the tests check it against the view. Louvain
(igraph's multilevel, fixed seed) gives a partition and its modularity Q. The null distribution
is Q of `n_null` random groups of the same size drawn from every neuron of the layer, built and
scored exactly like the observed graph;
p = (1 + #(null Q >= Q)) / (1 + n_null). Groups of one size share one null sample.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import random
import sys
import zlib
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import igraph
import numpy as np
import polars as pl

from rtn.analyses.geometry import group_members, rare_activation_matrix


@dataclass
class ModularityConfig:
    n_null: int = 100          # random groups per group size in the permutation test
    seed: int = 0              # seeds the null groups, together with run, step, layer and size
    louvain_seed: int = 0      # seeds igraph's multilevel Louvain, fixed so Q is reproducible
    resolution: float = 1.0    # Louvain and modularity resolution (1 = Newman's modularity)
    workers: int = 0           # processes running the null Louvain fits; 0 = one per core where forking is safe
    pool_min_size: int = 24    # smaller groups stay in-process: a worker pool costs ~1 s to start


def correlation_weights(acts: np.ndarray) -> np.ndarray:
    """Returns Pearson r [neurons, neurons] of activations [samples, neurons]; NaN where a neuron is constant."""
    centred = acts - acts.mean(axis=0, keepdims=True)
    norm = np.sqrt((centred**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (centred.T @ centred) / np.outer(norm, norm)


def louvain_labels(weights: np.ndarray, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
    """Returns the Louvain community of each node of the graph whose upper triangle is `weights`.

    igraph's multilevel Louvain (compiled; networkx's pure-Python one made the permutation nulls
    most of `rtn analyze`). Nodes 0..m-1, an edge i < j for every finite weight, in row-major
    order, and igraph's random numbers drawn from a generator seeded with `seed` for this call
    alone, so the same matrix always gives the same partition; communities numbered by their
    smallest node.
    """
    size = weights.shape[0]
    if size == 0:
        return np.empty(0, dtype=np.int64)
    rows, cols = np.triu_indices(size, 1)
    values = weights[rows, cols]
    keep = np.isfinite(values)
    if keep.all():   # the usual case: a complete graph, whose edges igraph lists in this same order
        graph = _complete_graph(size)
    else:
        graph = igraph.Graph(n=size, edges=np.column_stack([rows[keep], cols[keep]]).tolist())
    igraph.set_random_number_generator(random.Random(seed))
    try:
        membership = graph.community_multilevel(weights=values[keep].tolist(), resolution=resolution).membership
    finally:
        igraph.set_random_number_generator(random)   # igraph's default: the random module
    _, first, community = np.unique(membership, return_index=True, return_inverse=True)   # first: smallest node
    return np.argsort(np.argsort(first))[community].astype(np.int64)


@functools.lru_cache(maxsize=64)
def _complete_graph(size: int) -> igraph.Graph:
    """Returns the complete graph on nodes 0..size-1, edges (0,1), (0,2), ..., (1,2), ... (np.triu_indices order)."""
    return igraph.Graph.Full(size)


def modularity_q(weights: np.ndarray, labels: np.ndarray, resolution: float = 1.0) -> float:
    """Returns Newman's weighted modularity of a partition (the upper triangle of `weights` is the graph).

    Q = Σ_c [W_c / W − γ (K_c / 2W)²], W = total edge weight, W_c = weight inside c, K_c = degree sum of c.
    """
    upper = np.triu(np.nan_to_num(weights, nan=0.0), 1)
    adjacency = upper + upper.T
    total = upper.sum()
    if total <= 0:
        return float("nan")
    onehot = np.eye(labels.max() + 1)[labels]                   # [nodes, communities]
    inside = np.einsum("ic,ij,jc->c", onehot, adjacency, onehot) / 2
    degree = onehot.T @ adjacency.sum(axis=1)
    return float(np.sum(inside / total - resolution * (degree / (2 * total)) ** 2))


def signed_modularity(signed_weights: np.ndarray, labels: np.ndarray, resolution: float = 1.0) -> float:
    """Returns the signed modularity (Gómez, Jensen & Arenas 2009) of a partition.

    Q = (2w⁺ Q⁺ − 2w⁻ Q⁻) / (2w⁺ + 2w⁻), Q± the modularity of the positive / negative weights alone.
    """
    clean = np.nan_to_num(np.triu(signed_weights, 1), nan=0.0)
    parts = [np.clip(clean, 0, None), np.clip(-clean, 0, None)]
    totals = [part.sum() for part in parts]
    if sum(totals) <= 0:
        return float("nan")
    q = [modularity_q(part, labels, resolution) if t > 0 else 0.0 for part, t in zip(parts, totals)]
    return float((totals[0] * q[0] - totals[1] * q[1]) / (totals[0] + totals[1]))


def louvain_q(task: tuple[np.ndarray, float, int]) -> float:
    """Returns Q of the Louvain partition of one (weights, resolution, seed); a picklable pool task."""
    weights, resolution, seed = task
    return modularity_q(weights, louvain_labels(weights, resolution, seed), resolution)


def null_q(acts: np.ndarray, size: int, n_null: int, rng: np.random.Generator, config: ModularityConfig,
           pool: Executor | None = None) -> np.ndarray:
    """Returns the Louvain Q of `n_null` random groups of `size` columns of activations [samples, neurons].

    The groups are drawn here, in order, so a pool changes the speed and never the result.
    """
    tasks = []
    for _ in range(n_null):
        columns = np.sort(rng.choice(acts.shape[1], size=size, replace=False))
        tasks.append((np.abs(correlation_weights(acts[:, columns])), config.resolution, config.louvain_seed))
    if pool is None:
        return np.array([louvain_q(task) for task in tasks], dtype=np.float64)
    return np.fromiter(pool.map(louvain_q, tasks, chunksize=max(1, n_null // 16)), dtype=np.float64, count=n_null)


def _worker_count(config: ModularityConfig) -> int:
    if config.workers > 0:
        return config.workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """Returns (1 + #(null >= observed)) / (1 + n_null): never 0, exact under exchangeability."""
    null = np.asarray(null, dtype=np.float64)
    if not np.isfinite(observed):
        return float("nan")
    return float((1 + np.sum(null[np.isfinite(null)] >= observed)) / (1 + np.isfinite(null).sum()))


def null_seed(config: ModularityConfig, run_id: str, step: int, layer: int, size: int) -> int:
    """Returns the seed of one null sample: stable across processes and platforms (no hash())."""
    return config.seed * 2**32 + zlib.crc32(f"{run_id}/{step}/{layer}/{size}".encode())


def _graph_members(groups: pl.DataFrame) -> dict[str, list[int]]:
    """Returns {graph name: sorted neurons} for the groups of one (step, layer) and their unions."""
    members = {name: sorted(neurons) for name, neurons in zip(groups["group_name"], groups["neurons"])}
    if "plateau" in members:  # the union graphs of the modularity_edges view
        for name in [n for n in members if n.startswith("random_")]:
            members[f"plateau+{name}"] = sorted(set(members["plateau"]) | set(members[name]))
    return members


def _columns(layer_ids: np.ndarray, layer_acts: np.ndarray, neurons: list[int]) -> np.ndarray:
    """Returns the activations [samples, len(neurons)] of `neurons`; NaN for a neuron without samples (no edges)."""
    column = {int(neuron): i for i, neuron in enumerate(layer_ids)}
    picked = np.full((layer_acts.shape[0], len(neurons)), np.nan)
    for i, neuron in enumerate(neurons):
        if neuron in column:
            picked[:, i] = layer_acts[:, column[neuron]]
    return picked


def compute(con, run_id: str, config: ModularityConfig | None = None) -> dict[str, pl.DataFrame]:
    """Returns {"analysis_modularity", "analysis_communities"} for every group graph of a run."""
    config = config or ModularityConfig()
    groups = group_members(con, run_id)
    largest = 2 * max((len(n) for n in groups["neurons"]), default=0)   # a union graph at most
    workers = _worker_count(config)
    # fork, not spawn: spawn re-runs the host's __main__ (a Streamlit page, a notebook, a pytest run).
    # A process that loaded torch keeps its OpenMP threads, which a fork would inherit half-locked.
    # So `workers=0` (auto) pools only in a process without torch, e.g. `rtn analyze`; an explicit count always does.
    forkable = "fork" in multiprocessing.get_all_start_methods() and (config.workers > 0 or "torch" not in sys.modules)
    use_pool = forkable and workers > 1 and config.n_null > 1 and largest >= config.pool_min_size
    # spawn, not fork: the parent holds a DuckDB connection and its threads
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) if use_pool else None
    summary, communities = [], []
    with pool or nullcontext():
        for (step, layer), layer_groups in groups.group_by(["step", "layer"], maintain_order=True):
            rows, members = _layer_modularity(con, run_id, step, layer, layer_groups, config, pool)
            summary += rows
            communities += members
    return {
        "analysis_modularity": pl.DataFrame(summary, schema=MODULARITY_SCHEMA),
        "analysis_communities": pl.DataFrame(communities, schema=COMMUNITIES_SCHEMA),
    }


def _layer_modularity(con, run_id: str, step: int, layer: int, groups: pl.DataFrame,
                      config: ModularityConfig, pool: Executor | None) -> tuple[list[dict], list[dict]]:
    """Returns (analysis_modularity rows, analysis_communities rows) of the graphs of one (step, layer).

    A group's graph is built from the layer's activations exactly as its null graphs are; it is
    the graph of the `modularity_edges` view (tests recompute Q from that view).
    """
    layer_ids, layer_acts = rare_activation_matrix(con, run_id, step, layer)
    nulls: dict[int, tuple[int, np.ndarray]] = {}   # group size -> (seed, null Q): shared by equal sizes
    summary, communities = [], []
    for name, neurons in _graph_members(groups).items():
        signed_weights = correlation_weights(_columns(layer_ids, layer_acts, neurons))   # [m, m] r, NaN: no edge
        weights = np.abs(signed_weights)
        labels = louvain_labels(weights, config.resolution, config.louvain_seed)
        q = modularity_q(weights, labels, config.resolution)
        size = len(neurons)
        if size not in nulls:
            seed = null_seed(config, run_id, step, layer, size)
            draws = np.full(0, np.nan)
            if 2 <= size <= layer_acts.shape[1]:
                draws = null_q(layer_acts, size, config.n_null, np.random.default_rng(seed), config,
                               pool if size >= config.pool_min_size else None)
            nulls[size] = (seed, draws)
        seed, draws = nulls[size]
        summary.append({
            "run_id": run_id, "step": step, "layer": layer, "group_name": name, "n_neurons": size,
            "q": q, "signed_q": signed_modularity(signed_weights, labels, config.resolution),
            "n_communities": int(labels.max() + 1) if size else 0,
            "p_value": permutation_p_value(q, draws),
            "null_mean": float(np.nanmean(draws)) if draws.size else None,
            "null_std": float(np.nanstd(draws, ddof=1)) if draws.size > 1 else None,
            "n_null": int(draws.size), "null_q": draws.tolist(),
            "louvain_seed": config.louvain_seed, "null_seed": seed,
        })
        communities += [{"run_id": run_id, "step": step, "layer": layer, "group_name": name,
                         "neuron": n, "community": int(c)} for n, c in zip(neurons, labels)]
    return summary, communities


MODULARITY_SCHEMA = {
    "run_id": pl.Utf8, "step": pl.Int64, "layer": pl.Int32, "group_name": pl.Utf8, "n_neurons": pl.Int32,
    "q": pl.Float64, "signed_q": pl.Float64, "n_communities": pl.Int32, "p_value": pl.Float64,
    "null_mean": pl.Float64, "null_std": pl.Float64, "n_null": pl.Int32, "null_q": pl.List(pl.Float64),
    "louvain_seed": pl.Int32, "null_seed": pl.Int64,
}
COMMUNITIES_SCHEMA = {
    "run_id": pl.Utf8, "step": pl.Int64, "layer": pl.Int32, "group_name": pl.Utf8,
    "neuron": pl.Int32, "community": pl.Int32,
}
