"""Neuron groups of one checkpoint, read from the warehouse's own SQL, and their joint ablation.

    groups = ablation_groups(ablation_rows, run_id, step)          # (layer, group_name, k, neuron)
    rows = group_ablation_rows(groups, resid, acts, mean_acts, w_out, targets, readout, masks)

Group membership is a view (`neuron_groups`, DESIGN.md "Groups"). So that ingest and the
warehouse agree on it, ingest applies the repo's views to an in-memory DuckDB that holds just
this step's `ablation_deltas` rows and reads the groups back: the same SQL, not a re-implementation.
The joint ΔLoss of a group is exact (`ablation.group_deltas`); rows go to `group_ablation_deltas`.
"""
from __future__ import annotations

import duckdb
import polars as pl
import torch

from rtn import sql, warehouse
from rtn.ingest.ablation import groups_deltas
from rtn.ingest.corpus import mean_and_stderr
from rtn.ingest.readout import Readout

TOP_KS = tuple(range(1, 11))   # sizes of the top-k rare-boost prefixes ablated jointly
TOP_BOOST = "top_boost"        # group_name of those prefixes (k = their size)

GROUPS_SCHEMA = {"layer": pl.Int32, "group_name": pl.Utf8, "k": pl.Int32, "neuron": pl.Int32}
GROUP_ABLATION_SCHEMA = {"layer": pl.Int32, "group_name": pl.Utf8, "k": pl.Int32, "token_class": pl.Utf8,
                         "joint_delta": pl.Float64, "std_err": pl.Float64, "n": pl.Int32,
                         "neurons": pl.List(pl.Int32)}


def _step_warehouse(ablation_rows: pl.DataFrame, run_id: str, step: int) -> duckdb.DuckDBPyConnection:
    """Returns an in-memory DuckDB with every table and view, holding one step's ablation_deltas."""
    con = duckdb.connect()
    sql.create_tables(con)
    rows = ablation_rows.with_columns(pl.lit(run_id).alias("run_id"), pl.lit(step).cast(pl.Int64).alias("step"))
    warehouse.replace_rows(con, "ablation_deltas", rows.select("run_id", "step", "layer", "neuron", "token_class",
                                                               "delta_loss", "std_err", "n"))
    sql.apply_views(con)
    return con


def _neuron_groups(con) -> pl.DataFrame:
    return warehouse.frame(con, "select run_id, step, layer, group_name, neuron from neuron_groups "
                                "order by layer, group_name, neuron")


def step_groups(ablation_rows: pl.DataFrame, run_id: str, step: int) -> pl.DataFrame:
    """Returns neuron_groups rows (run_id, step, layer, group_name, neuron) of one step's ablation rows."""
    con = _step_warehouse(ablation_rows, run_id, step)
    try:
        return _neuron_groups(con)
    finally:
        con.close()


def ablation_groups(ablation_rows: pl.DataFrame, run_id: str, step: int, top_ks=TOP_KS) -> pl.DataFrame:
    """Returns the groups to ablate jointly, (layer, group_name, k, neuron): every neuron_groups group
    at its size k, and the top-k rare-boost neurons (neuron_influence rank <= k) as 'top_boost'."""
    con = _step_warehouse(ablation_rows, run_id, step)
    try:
        named = _neuron_groups(con)
        ranked = warehouse.frame(con, "select layer, neuron, rank from neuron_influence "
                                      "where token_class = 'rare' and sign = 'boost' and rank <= ? "
                                      "order by layer, rank", [max(top_ks, default=0)])
    finally:
        con.close()
    named = named.with_columns(pl.len().over("layer", "group_name").alias("k")).select(*GROUPS_SCHEMA)
    prefixes = [ranked.filter(pl.col("rank") <= k).select("layer", pl.lit(TOP_BOOST).alias("group_name"),
                                                            pl.lit(k).alias("k"), "neuron")
                for k in top_ks if ranked.filter(pl.col("rank") == k).height]   # only sizes that exist
    return pl.concat([frame.cast(GROUPS_SCHEMA) for frame in (named, *prefixes)])


@torch.no_grad()
def group_ablation_rows(groups: pl.DataFrame, resid: torch.Tensor, acts: torch.Tensor, mean_acts: torch.Tensor,
                        w_out: torch.Tensor, targets: torch.Tensor, readout: Readout,
                        masks: dict[str, torch.Tensor], joint_deltas=None) -> pl.DataFrame:
    """Returns group_ablation_deltas rows (without run_id/step): joint ΔLoss of each group per token class.

    groups: (layer, group_name, k, neuron) from `ablation_groups`; resid [M, d], acts [M, n] and
    targets [M] at the included predictions; mean_acts [n]; w_out [n, d]; masks {token_class: [M]}.
    joint_deltas: a function from the groups' neuron tensors to ΔLoss [M, G] for a layer before the
    last (ingest/layer_ablation.py); default the last layer's analytic `groups_deltas`.
    """
    keyed = [(key, sorted(members["neuron"].to_list()))
             for key, members in groups.group_by("layer", "group_name", "k", maintain_order=True)]
    if not keyed:
        return pl.DataFrame(schema=GROUP_ABLATION_SCHEMA)
    neuron_sets = [torch.tensor(neurons, device=acts.device) for _, neurons in keyed]
    joint = (joint_deltas(neuron_sets) if joint_deltas is not None                             # [M, G]
             else groups_deltas(resid, acts, mean_acts, w_out, targets, readout, neuron_sets))
    rows = []
    for g, ((layer, group_name, k), neurons) in enumerate(keyed):
        for name, mask in masks.items():
            mean, stderr, n = mean_and_stderr(joint[:, g], mask)
            rows.append({"layer": layer, "group_name": group_name, "k": k, "token_class": name,
                         "joint_delta": float(mean), "std_err": float(stderr), "n": n, "neurons": neurons})
    return pl.DataFrame(rows, schema=GROUP_ABLATION_SCHEMA)
