"""Louvain modularity and its permutation test: against networkx, on planted and null data.

    .venv/bin/pytest tests/unit/test_modularity.py            # calibration: tests/integration/test_modularity_calibration.py
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import polars as pl
import pytest
from test_geometry import build_warehouse

from rtn.analyses import modularity
from rtn.analyses.modularity import ModularityConfig


def _graph(weights: np.ndarray) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(range(weights.shape[0]))
    for i in range(weights.shape[0]):
        for j in range(i + 1, weights.shape[0]):
            graph.add_edge(i, j, weight=weights[i, j])
    return graph


def _blocks(rng, n_samples: int, sizes: list[int], noise: float = 0.6) -> np.ndarray:
    """Returns activations [samples, Σ sizes]: neurons of one block share a latent signal."""
    return np.hstack([rng.standard_normal((n_samples, 1)) + noise * rng.standard_normal((n_samples, size))
                      for size in sizes])


@pytest.mark.parametrize("seed", range(5))
def test_modularity_q_matches_networkx(seed):
    rng = np.random.default_rng(seed)
    size = 9
    weights = rng.random((size, size))
    labels = rng.integers(0, 3, size)
    labels = np.unique(labels, return_inverse=True)[1]
    communities = [set(np.flatnonzero(labels == c).tolist()) for c in range(labels.max() + 1)]
    for resolution in (1.0, 0.5):
        expected = nx.community.modularity(_graph(weights), communities, weight="weight", resolution=resolution)
        assert modularity.modularity_q(weights, labels, resolution) == pytest.approx(expected, abs=1e-12)


def test_signed_modularity_matches_the_gomez_formula_by_loops():
    rng = np.random.default_rng(7)
    size = 8
    signed = np.triu(rng.uniform(-1, 1, (size, size)), 1)
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    full = signed + signed.T
    pos, neg = np.clip(full, 0, None), np.clip(-full, 0, None)
    two_w_pos, two_w_neg = pos.sum(), neg.sum()
    total = 0.0
    for i in range(size):
        for j in range(size):
            if labels[i] == labels[j]:
                total += full[i, j] - (pos[i].sum() * pos[j].sum() / two_w_pos - neg[i].sum() * neg[j].sum() / two_w_neg)
    assert modularity.signed_modularity(signed, labels) == pytest.approx(total / (two_w_pos + two_w_neg), abs=1e-12)


def test_permutation_p_value_counts_ties_and_never_returns_zero():
    null = np.array([0.1, 0.2, 0.3, 0.3, np.nan])
    assert modularity.permutation_p_value(0.3, null) == pytest.approx(3 / 5)
    assert modularity.permutation_p_value(0.9, null) == pytest.approx(1 / 5)
    assert modularity.permutation_p_value(0.0, null) == pytest.approx(1.0)


def test_planted_blocks_give_high_q_small_p_and_the_blocks_as_communities():
    rng = np.random.default_rng(11)
    n_samples, n_other = 120, 150
    planted = _blocks(rng, n_samples, [4, 4, 4])                        # plateau = 3 correlated blocks
    acts = np.hstack([planted, rng.standard_normal((n_samples, n_other))])
    randoms = {f"random_{j}": sorted(rng.choice(np.arange(12, 12 + n_other), 12, replace=False).tolist())
               for j in (1, 2)}
    con = build_warehouse({0: acts}, {0: {"plateau": list(range(12)), **randoms}}, np.ones(n_samples, bool))
    tables = modularity.compute(con, "t", ModularityConfig(workers=1))
    summary = tables["analysis_modularity"]
    plateau = summary.filter(pl.col("group_name") == "plateau").row(0, named=True)
    assert plateau["q"] > 0.4 and plateau["q"] > plateau["null_mean"] + 5 * plateau["null_std"]
    assert plateau["p_value"] == pytest.approx(1 / 101)
    assert plateau["n_communities"] == 3 and plateau["n_null"] == len(plateau["null_q"]) == 100
    communities = tables["analysis_communities"].filter(pl.col("group_name") == "plateau").sort("neuron")
    assert communities["community"].to_list() == [0] * 4 + [1] * 4 + [2] * 4
    for name in ("random_1", "random_2"):
        row = summary.filter(pl.col("group_name") == name).row(0, named=True)
        assert row["q"] < plateau["q"] / 2
    assert set(summary["group_name"]) == {"plateau", "random_1", "random_2", "plateau+random_1", "plateau+random_2"}


def test_independent_activations_give_q_near_the_null_and_a_large_p():
    rng = np.random.default_rng(12)
    n_samples, n_neurons = 80, 120
    acts = rng.standard_normal((n_samples, n_neurons))
    groups = {"plateau": list(range(10)), "random_1": list(range(10, 20)), "random_2": list(range(20, 30))}
    con = build_warehouse({0: acts}, {0: groups}, np.ones(n_samples, bool))
    summary = modularity.compute(con, "t", ModularityConfig(workers=1))["analysis_modularity"]
    for row in summary.iter_rows(named=True):
        assert abs(row["q"] - row["null_mean"]) < 3 * row["null_std"], row["group_name"]
    plateau = summary.filter(pl.col("group_name") == "plateau").row(0, named=True)
    assert plateau["p_value"] > 0.1


def test_stored_partition_recomputes_q_with_networkx_from_the_edge_view():
    rng = np.random.default_rng(13)
    n_samples = 60
    acts = np.hstack([_blocks(rng, n_samples, [3, 5], noise=1.0), rng.standard_normal((n_samples, 40))])
    groups = {"plateau": list(range(8)), "random_1": list(range(8, 16)), "random_2": list(range(20, 28))}
    con = build_warehouse({0: acts, 1: acts[:, ::-1].copy()}, {0: groups, 1: groups}, rng.random(n_samples) < 0.7)
    tables = modularity.compute(con, "t", ModularityConfig(n_null=5, workers=1))
    edges = con.execute("select step, group_name, neuron_a, neuron_b, weight from modularity_edges").fetchall()
    for row in tables["analysis_modularity"].iter_rows(named=True):
        members = tables["analysis_communities"].filter((pl.col("step") == row["step"])
                                                        & (pl.col("group_name") == row["group_name"]))
        graph = nx.Graph()
        graph.add_nodes_from(members["neuron"].to_list())
        graph.add_weighted_edges_from((a, b, w) for s, g, a, b, w in edges if s == row["step"] and g == row["group_name"])
        partition = [set(part["neuron"].to_list()) for _, part in members.group_by("community")]
        assert len(partition) == row["n_communities"]
        assert nx.community.modularity(graph, partition, weight="weight") == pytest.approx(row["q"], abs=1e-12)
    assert tables["analysis_modularity"].height == 2 * 5


def test_null_distribution_is_reproducible_and_seeded():
    rng = np.random.default_rng(14)
    acts = rng.standard_normal((50, 40))
    groups = {"plateau": list(range(6)), "random_1": list(range(6, 12))}
    first, second = (modularity.compute(build_warehouse({0: acts}, {0: groups}, np.ones(50, bool)), "t",
                                        ModularityConfig(n_null=10, workers=1))["analysis_modularity"] for _ in range(2))
    assert first.equals(second)
    reseeded = modularity.compute(build_warehouse({0: acts}, {0: groups}, np.ones(50, bool)), "t",
                                  ModularityConfig(n_null=10, seed=1, workers=1))["analysis_modularity"]
    assert reseeded["null_q"].to_list() != first["null_q"].to_list()
    # plateau and random_1 have one size: they share one null sample
    assert first["null_q"][0].to_list() == first["null_q"][1].to_list()


def test_worker_pool_gives_the_same_tables_as_one_process():
    rng = np.random.default_rng(15)
    acts = np.hstack([_blocks(rng, 40, [5, 5]), rng.standard_normal((40, 60))])
    groups = {"plateau": list(range(10)), "random_1": list(range(10, 20)), "random_2": list(range(30, 40))}
    con = build_warehouse({0: acts}, {0: groups}, np.ones(40, bool))
    one, two = (modularity.compute(con, "t", ModularityConfig(n_null=20, workers=w, pool_min_size=10))
                for w in (1, 2))
    for table in one:
        assert one[table].equals(two[table]), table


@pytest.mark.parametrize("seed", range(4))
def test_louvain_partition_is_seeded_apart_from_global_state_and_as_good_as_networkx(seed):
    import random
    rng = np.random.default_rng(20 + seed)
    weights = np.abs(modularity.correlation_weights(np.hstack([_blocks(rng, 60, [4, 6, 5], noise=1.2),
                                                                rng.standard_normal((60, 9))])))
    labels = modularity.louvain_labels(weights, seed=3)
    random.seed(seed)                                   # the global generators igraph and numpy could read
    np.random.seed(seed)
    assert np.array_equal(modularity.louvain_labels(weights, seed=3), labels)
    assert labels[0] == 0 and all(labels[i] <= labels[:i].max() + 1 for i in range(1, len(labels)))  # by smallest node
    communities = [set(np.flatnonzero(labels == c).tolist()) for c in range(labels.max() + 1)]
    q = nx.community.modularity(_graph(weights), communities, weight="weight")
    assert modularity.modularity_q(weights, labels) == pytest.approx(q, abs=1e-12)
    networkx_q = nx.community.modularity(_graph(weights), nx.community.louvain_communities(
        _graph(weights), weight="weight", seed=0), weight="weight")
    assert q >= networkx_q - 0.01                       # a Louvain optimum, not just any partition


def test_louvain_on_edgeless_and_empty_graphs():
    assert modularity.louvain_labels(np.zeros((0, 0))).shape == (0,)
    assert modularity.louvain_labels(np.full((3, 3), np.nan)).tolist() == [0, 1, 2]


def test_the_complete_graph_lists_its_edges_in_the_order_of_the_weights():
    for size in (2, 3, 17):
        rows, cols = np.triu_indices(size, 1)
        assert [edge.tuple for edge in modularity._complete_graph(size).es] == list(zip(rows.tolist(), cols.tolist()))
