"""Head, layer and group ablations against brute-force oracles; the synergy analysis and views on hand-written rows.

    .venv/bin/pytest tests/unit/test_heads.py

The head oracle does not touch the attention output projection that `ingest/heads.py` hooks: it
swaps in its own attention function (transformers' AttentionInterface) that runs the family's
eager attention and then edits the heads inside attention itself — it overwrites a head's output
[B, L, head, d_head] by its mean, or moves the head's attention weights onto the first key and
recomputes weights @ values.
"""
from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest
import torch
from conftest import VOCAB, tiny_model
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.gpt2 import modeling_gpt2
from transformers.models.gpt_neox import modeling_gpt_neox

from rtn import sql
from rtn.analyses import group_ablation
from rtn.errors import RtnError
from rtn.ingest import adapters
from rtn.ingest.capture import capture, hooked
from rtn.ingest.config import IngestConfig
from rtn.ingest.corpus import COMMON, EXCLUDED, RARE, EvalData
from rtn.ingest.groups import TOP_BOOST, ablation_groups, group_ablation_rows, step_groups
from rtn.ingest.heads import METHODS, check_head_layers, head_ablations, head_columns
from rtn.ingest.readout import readout_of

TOL = 1e-5                 # float32 model, as in the acceptance criterion
ORACLE = "rtn_head_oracle"
EAGER = {"gpt_neox": modeling_gpt_neox.eager_attention_forward, "gpt2": modeling_gpt2.eager_attention_forward}


class HeadOracle:
    """What the oracle attention does: at `layer`, ablate `heads` by `method` (or only record means)."""
    layer, heads, method = None, (), None
    sums: dict = {}
    count: dict = {}


def _oracle_attention(module, query, key, value, attention_mask, **kwargs):
    out, weights = EAGER[HeadOracle.family](module, query, key, value, attention_mask, **kwargs)   # out [B, L, H, dh]
    layer = module.layer_idx
    HeadOracle.sums[layer] = HeadOracle.sums.get(layer, 0) + out.double().sum((0, 1))             # [H, dh]
    HeadOracle.count[layer] = HeadOracle.count.get(layer, 0) + out.shape[0] * out.shape[1]
    if layer != HeadOracle.layer:
        return out, weights
    heads = list(HeadOracle.heads)
    if HeadOracle.method == "mean":
        out = out.clone()
        out[:, :, heads] = HeadOracle.means[heads].to(out.dtype)
    else:   # bos: all attention of these heads on the first key
        weights = weights.clone()
        weights[:, heads] = 0
        weights[:, heads, :, 0] = 1
        out = (weights @ value).transpose(1, 2)
    return out, weights


AttentionInterface.register(ORACLE, _oracle_attention)
AttentionMaskInterface.register(ORACLE, eager_mask)


def _data(seqs=4, length=16, seed=3) -> EvalData:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (seqs, length), generator=gen)
    classes = torch.where(torch.rand(seqs, length, generator=gen) < 0.4, RARE, COMMON)
    classes[:, :3] = EXCLUDED
    classes[:, -1] = EXCLUDED
    return EvalData(None, None, ids, classes, torch.arange(8), vocab=[])


def _config(**kw) -> IngestConfig:
    return IngestConfig(model="tiny", **{"head_layers": 2, "batch_size": 3, "precision": "float64", **kw})


def _oracle_model(family):
    model = tiny_model(family)
    model.config._attn_implementation = ORACLE
    HeadOracle.family = family
    return model


def _oracle_run(model, data, layer, heads, method, plateau):
    """Returns (per-position loss [S*L], plateau activations [S*L, p]) of the oracle's ablated run."""
    adapter = adapters.adapter_for(model)
    HeadOracle.layer, HeadOracle.heads, HeadOracle.method = None, (), None
    HeadOracle.sums, HeadOracle.count = {}, {}
    with torch.no_grad():
        model(data.input_ids, use_cache=False)                                  # clean run: the head means
    if layer is not None:
        HeadOracle.means = HeadOracle.sums[layer] / HeadOracle.count[layer]    # [H, dh] over every position
    HeadOracle.layer, HeadOracle.heads, HeadOracle.method = layer, heads, method
    cap = capture(model, adapter, adapters.resolve_layer(model, adapter, -1), data.input_ids)
    with torch.no_grad():
        logits = model(data.input_ids, use_cache=False).logits.double()
    HeadOracle.layer = None
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.roll(data.input_ids, -1, 1).flatten(),
                                               reduction="none")
    return losses, cap.acts.flatten(0, 1)[:, plateau].double()


def _expected(family, data, layer, heads, method, plateau):
    model = _oracle_model(family)
    clean_loss, clean_acts = _oracle_run(model, data, None, (), None, plateau)
    loss, acts = _oracle_run(model, data, layer, heads, method, plateau)
    flat = data.classes.flatten()
    out = {}
    for name, mask in {"rare": flat == RARE, "common": flat == COMMON, "all": flat != EXCLUDED}.items():
        out[name] = ((loss - clean_loss)[mask].mean().item(), (acts - clean_acts)[mask].abs().mean().item())
    return out


def _rows(family, data, plateau, **kw):
    model = tiny_model(family)
    return head_ablations(model, adapters.adapter_for(model), data, _config(**kw), None, plateau)


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
def test_single_head_ablation_equals_oracle_inside_attention(family):
    data, plateau = _data(), [0, 5, 33, 70]
    rows = _rows(family, data, plateau)
    assert rows.height == 2 * 2 * 5 * 3          # layers x methods x (4 heads + whole) x classes
    worst, largest = 0.0, 0.0
    for layer, head, method in [(0, 1, "mean"), (1, 3, "mean"), (0, 2, "bos"), (1, 0, "bos")]:
        expected = _expected(family, data, layer, [head], method, plateau)
        got = rows.filter((pl.col("layer") == layer) & (pl.col("head") == head) & (pl.col("method") == method))
        for row in got.iter_rows(named=True):
            delta, act_change = expected[row["token_class"]]
            worst = max(worst, abs(row["delta_loss"] - delta), abs(row["plateau_act_change"] - act_change))
            largest = max(largest, abs(delta))
    assert worst <= TOL
    assert largest > 100 * TOL     # real effects were compared, not zeros


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
@pytest.mark.parametrize("method", ["mean", "bos"])
def test_whole_layer_ablation_equals_ablating_all_its_heads_together(family, method):
    data, plateau = _data(), [2, 9]
    rows = _rows(family, data, plateau, head_layers=1)
    whole = rows.filter((pl.col("head") == -1) & (pl.col("method") == method))
    expected = _expected(family, data, 1, [0, 1, 2, 3], method, plateau)
    for row in whole.iter_rows(named=True):
        assert row["layer"] == 1
        assert row["delta_loss"] == pytest.approx(expected[row["token_class"]][0], abs=TOL)
        assert row["plateau_act_change"] == pytest.approx(expected[row["token_class"]][1], abs=TOL)
    assert whole["delta_loss"].abs().max() > 100 * TOL


def test_relative_change_divides_by_the_clean_class_loss_and_no_plateau_gives_nan():
    data = _data()
    model = tiny_model("gpt_neox")
    clean = {"rare": 2.0, "common": 4.0, "all": 3.0}
    rows = head_ablations(model, adapters.adapter_for(model), data, _config(head_layers=1), clean, [])
    for row in rows.iter_rows(named=True):
        assert row["relative_change"] == pytest.approx(row["delta_loss"] / clean[row["token_class"]], rel=1e-12)
    assert rows["plateau_act_change"].is_nan().all()


@pytest.mark.parametrize("k", [3, -1])
def test_head_layers_beyond_the_model_is_a_one_line_error(k):
    with pytest.raises(RtnError) as err:
        check_head_layers(2, k)
    assert "\n" not in str(err.value) and f"--head-layers {k}" in str(err.value)
    model = tiny_model("gpt2")
    with pytest.raises(RtnError, match="--head-layers"):
        head_ablations(model, adapters.adapter_for(model), _data(), _config(head_layers=k), None, [])


def test_a_head_that_does_not_exist_is_a_one_line_error():
    assert head_columns(2, 4, 32) == slice(16, 24) and head_columns(-1, 4, 32) == slice(0, 32)
    for head in (4, -2):
        with pytest.raises(RtnError) as err:
            head_columns(head, 4, 32)
        assert "\n" not in str(err.value) and f"head {head} does not exist" in str(err.value)


def test_zero_head_layers_gives_no_rows():
    model = tiny_model("gpt_neox")
    assert head_ablations(model, adapters.adapter_for(model), _data(), _config(head_layers=0), None, []).height == 0


def test_head_reruns_report_their_progress_under_the_label(monkeypatch):
    from rtn.ingest import progress
    made = []

    class Recording(progress.Ticker):
        def __init__(self, total, label, unit, **kw):
            super().__init__(total, label, unit, **kw)
            made.append(self)

    monkeypatch.setattr(progress, "Ticker", Recording)
    model = tiny_model("gpt_neox")
    rows = head_ablations(model, adapters.adapter_for(model), _data(), _config(head_layers=2), None, [],
                          progress=progress.StageTimer("ingest r step 0"))
    (ticker,) = made
    n_heads = model.config.num_attention_heads
    assert ticker.label == "ingest r step 0: heads" and ticker.done == ticker.total == 2 * len(METHODS) * (n_heads + 1)
    assert rows.height == ticker.total * 3                      # one re-run per (layer, method, head), three classes


# --- groups -------------------------------------------------------------------------------------------


def _ablation_inputs(family="gpt_neox"):
    model = tiny_model(family)
    adapter = adapters.adapter_for(model)
    data = _data()
    cap = capture(model, adapter, 1, data.input_ids)
    keep = (data.classes != EXCLUDED).flatten()
    targets = torch.roll(data.input_ids, -1, 1).flatten()[keep]
    acts_all = cap.acts.flatten(0, 1)
    _, w_out = adapters.mlp_weights(model, adapter, 1)
    readout = readout_of(adapters.final_norm(model, adapter), model.get_output_embeddings())
    classes = data.classes.flatten()[keep]
    masks = {"rare": classes == RARE, "common": classes == COMMON, "all": classes == classes}
    return model, adapter, data, keep, cap.resid.flatten(0, 1)[keep], acts_all, targets, w_out, readout, masks


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
def test_group_ablation_rows_equal_a_hook_setting_the_whole_group(family):
    model, adapter, data, keep, resid, acts_all, targets, w_out, readout, masks = _ablation_inputs(family)
    mean_acts = acts_all.mean(0)
    groups = pl.DataFrame({"layer": 1, "group_name": ["plateau"] * 4 + ["random_1"] * 3,
                           "k": [4] * 4 + [3] * 3, "neuron": [7, 3, 50, 12, 1, 60, 71]})
    rows = group_ablation_rows(groups, resid, acts_all[keep], mean_acts, w_out, targets, readout, masks)
    assert rows.height == 2 * 3
    for (name, members) in (("plateau", [3, 7, 12, 50]), ("random_1", [1, 60, 71])):
        def ablate(_module, inputs):
            patched = inputs[0].clone()
            patched[..., members] = mean_acts[members]
            return (patched,)
        with torch.no_grad():
            clean = model(data.input_ids, use_cache=False).logits
            with hooked(adapters.mlp_out_module(model, adapter, 1), ablate):
                ablated = model(data.input_ids, use_cache=False).logits
        target_all = torch.roll(data.input_ids, -1, 1).flatten()
        ce = lambda logits: torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_all, reduction="none")
        delta = (ce(ablated) - ce(clean))[keep]
        for row in rows.filter(pl.col("group_name") == name).iter_rows(named=True):
            mask = masks[row["token_class"]]
            assert row["neurons"] == members and row["n"] == int(mask.sum())
            assert row["joint_delta"] == pytest.approx(delta[mask].mean().item(), abs=TOL)
            assert row["std_err"] == pytest.approx(delta[mask].std().item() / np.sqrt(row["n"]), abs=TOL)
        assert delta.abs().max() > 100 * TOL


def test_top_boost_prefixes_follow_the_rare_boost_ranking_of_the_sql_view():
    rng = np.random.default_rng(0)
    n = 30
    rare = rng.normal(0, 1, n)
    ablation = pl.concat([pl.DataFrame({"layer": 1, "neuron": np.arange(n, dtype=np.int32), "token_class": cls,
                                        "delta_loss": values, "std_err": 0.0, "n": 10})
                          for cls, values in (("rare", rare), ("common", rng.normal(0, 1, n)), ("all", rare))])
    groups = ablation_groups(ablation, "run", 7)
    top = groups.filter(pl.col("group_name") == TOP_BOOST)
    order = [i for i in np.argsort(-rare, kind="stable") if rare[i] > 0]
    assert sorted(top["k"].unique().to_list()) == list(range(1, min(10, len(order)) + 1))
    for k in range(1, 11):
        assert sorted(top.filter(pl.col("k") == k)["neuron"].to_list()) == sorted(order[:k])


def test_step_groups_are_the_warehouse_neuron_groups_of_that_run_and_step():
    rng = np.random.default_rng(1)
    n = 40
    ablation = pl.concat([pl.DataFrame({"layer": 1, "neuron": np.arange(n, dtype=np.int32), "token_class": cls,
                                        "delta_loss": rng.normal(0, 1, n) * np.exp(-np.arange(n) / 8),
                                        "std_err": 0.0, "n": 10}) for cls in ("rare", "common", "all")])
    con = _warehouse(ablation_deltas=ablation.with_columns(pl.lit("run").alias("run_id"), pl.lit(7).alias("step")))
    sql.apply_views(con)
    stored = con.sql("select run_id, step, layer, group_name, neuron from neuron_groups order by all").pl()
    assert stored.filter(pl.col("group_name").str.starts_with("random_")).height
    assert step_groups(ablation, "run", 7).sort(pl.all()).equals(stored)
    named = ablation_groups(ablation, "run", 7).filter(pl.col("group_name") != TOP_BOOST)
    sizes = stored.group_by("group_name").len().rows()
    assert sorted(named.group_by("group_name").agg(pl.col("k").first()).rows()) == sorted(sizes)


# --- synergy analysis and views on hand-written rows ---------------------------------------------------


def _warehouse(**tables) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    sql.create_tables(con)
    for table, rows in tables.items():
        con.register("_rows", pl.DataFrame(rows).to_arrow())
        con.execute(f"insert into {table} by name select * from _rows")
        con.unregister("_rows")
    return con


def test_synergy_ratio_is_joint_over_the_sum_of_single_neuron_deltas():
    singles = [{"run_id": "r", "step": 4, "layer": 1, "neuron": i, "token_class": "rare", "delta_loss": d}
               for i, d in [(0, 0.5), (1, 0.25), (2, 0.125), (3, -0.375)]]
    joints = [
        {"run_id": "r", "step": 4, "layer": 1, "group_name": "plateau", "k": 3, "token_class": "rare",
         "joint_delta": 1.75, "neurons": [0, 1, 2]},
        {"run_id": "r", "step": 4, "layer": 1, "group_name": "random_1", "k": 2, "token_class": "rare",
         "joint_delta": 0.25, "neurons": [2, 3]},
        {"run_id": "r", "step": 4, "layer": 1, "group_name": "random_2", "k": 2, "token_class": "rare",
         "joint_delta": 0.5, "neurons": [1, 3]},
        {"run_id": "r", "step": 4, "layer": 1, "group_name": "top_boost", "k": 2, "token_class": "rare",
         "joint_delta": 1.0, "neurons": [0, 9]},   # neuron 9 has no single row: no additive sum
    ]
    con = _warehouse(ablation_deltas=singles, group_ablation_deltas=joints)
    table = group_ablation.compute(con, "r")["analysis_group_ablation"]
    got = {row["group_name"]: (row["additive_delta"], row["synergy_ratio"]) for row in table.iter_rows(named=True)}
    assert got == {"plateau": (0.875, 2.0), "random_1": (-0.25, -1.0), "random_2": (-0.125, -4.0),
                   "top_boost": (None, None)}
    assert table.columns[:7] == ["run_id", "step", "layer", "group_name", "k", "token_class", "joint_delta"]

    con.register("_rows", table.to_arrow())
    con.execute("insert into analysis_group_ablation by name select * from _rows")
    sql.apply_views(con, names=["group_synergy"])
    synergy = con.sql("select * from group_synergy").pl().row(0, named=True)
    assert (synergy["plateau_k"], synergy["plateau_synergy_ratio"], synergy["n_random"]) == (3, 2.0, 2)
    assert (synergy["random_synergy_ratio"], synergy["synergy_ratio_gap"]) == (-2.5, 4.5)


def test_head_effects_view_compares_the_median_head_with_the_whole_layer():
    rows = [{"run_id": "r", "step": 1, "layer": 3, "head": h, "method": "mean", "token_class": "rare",
             "delta_loss": d, "relative_change": d / 2, "plateau_act_change": 0.1}
            for h, d in [(0, 0.01), (1, -0.03), (2, 0.02), (-1, 0.4)]]
    con = _warehouse(head_ablations=rows)
    sql.apply_views(con, names=["head_effects"])
    got = con.sql("select * from head_effects").pl()
    assert got.height == 1
    row = got.row(0, named=True)
    assert (row["n_heads"], row["median_head_abs_delta"], row["layer_delta"]) == (3, 0.02, 0.4)
    assert row["median_head_to_layer"] == pytest.approx(0.05, abs=1e-15)
    assert row["max_head_to_layer"] == pytest.approx(0.075, abs=1e-15)
    assert (row["median_head_abs_relative_change"], row["layer_relative_change"]) == (0.01, 0.2)
