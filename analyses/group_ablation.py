"""Group-ablation synergy: joint ΔLoss of a group against the sum of its members' ΔLoss -> `analysis_group_ablation`.

    from rtn.analyses import group_ablation
    tables = group_ablation.compute(con, "demo")   # {"analysis_group_ablation": polars.DataFrame}

joint_delta is the exact joint mean ablation (`group_ablation_deltas`, written by ingest);
additive_delta sums the single-neuron `ablation_deltas.delta_loss` of exactly the neurons that
were ablated (the row's `neurons`), same step, layer and token class. synergy_ratio =
joint / additive: > 1 means the group hurts more together than its members one by one.
"""
from __future__ import annotations

import polars as pl

GROUP_ABLATION_SCHEMA = {
    "run_id": pl.Utf8, "step": pl.Int64, "layer": pl.Int32, "group_name": pl.Utf8, "k": pl.Int32,
    "token_class": pl.Utf8, "joint_delta": pl.Float64, "additive_delta": pl.Float64, "synergy_ratio": pl.Float64,
}
KEY = ["step", "layer", "group_name", "k", "token_class"]


def synergy(groups: pl.DataFrame, singles: pl.DataFrame) -> pl.DataFrame:
    """Returns joint, additive and their ratio per group row.

    groups: (step, layer, group_name, k, token_class, joint_delta, neurons); singles: ablation_deltas
    (step, layer, neuron, token_class, delta_loss). additive_delta is NULL unless every member has a
    single-neuron row; synergy_ratio is NULL where additive_delta is 0 or NULL.
    """
    members = groups.select(*KEY, "neurons").explode("neurons").rename({"neurons": "neuron"})
    additive = (members.join(singles.select("step", "layer", "neuron", "token_class", "delta_loss"),
                             on=["step", "layer", "neuron", "token_class"], how="left")
                .group_by(KEY)
                .agg(pl.col("delta_loss").sum().alias("additive_delta"),
                     pl.col("delta_loss").null_count().alias("missing")))
    additive = additive.with_columns(pl.when(pl.col("missing") == 0).then(pl.col("additive_delta")).alias("additive_delta"))
    return (groups.select(*KEY, "joint_delta")
            .join(additive.select(*KEY, "additive_delta"), on=KEY, how="left")
            .with_columns(pl.when(pl.col("additive_delta") != 0)
                          .then(pl.col("joint_delta") / pl.col("additive_delta")).alias("synergy_ratio")))


def compute(con, run_id: str) -> dict[str, pl.DataFrame]:
    """Returns {"analysis_group_ablation": one row per (run_id, step, layer, group_name, k, token_class)}."""
    groups = con.sql("select step, layer, group_name, k, token_class, joint_delta, neurons "
                     "from group_ablation_deltas where run_id = ?", params=[run_id]).pl()
    singles = con.sql("select step, layer, neuron, token_class, delta_loss from ablation_deltas "
                      "where run_id = ? and (step, layer) in (select distinct step, layer from group_ablation_deltas "
                      "where run_id = ?)", params=[run_id, run_id]).pl()
    table = synergy(groups, singles).with_columns(pl.lit(run_id).alias("run_id"))
    return {"analysis_group_ablation": table.select(pl.col(c).cast(t) for c, t in GROUP_ABLATION_SCHEMA.items())
            .sort("step", "layer", "group_name", "k", "token_class")}
