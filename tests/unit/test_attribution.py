"""The attribution screen equals the analytic first-order ΔLoss where later blocks are identities.

    .venv/bin/pytest tests/unit/test_attribution.py
"""
from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_model

from rtn.ingest import adapters
from rtn.ingest.attribution import attribution_deltas, attribution_rows
from rtn.ingest.corpus import COMMON, EXCLUDED, RARE, RARE_CHOSEN, EvalData, class_masks
from rtn.ingest.layer_ablation import clean_pass, layer_deltas
from rtn.ingest.readout import readout_of


def _batch(seqs=5, length=12, chosen=0):
    """Returns ids and classes [seqs, length]; the last `chosen` sequences are windows chosen for their rare targets
    (RARE_CHOSEN there, nothing else counted), the others corpus-order windows (RARE and COMMON)."""
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (seqs, length), generator=gen)
    classes = torch.where(torch.rand(seqs, length, generator=gen) < 0.4, RARE, COMMON)
    if chosen:
        classes[-chosen:] = torch.where(classes[-chosen:] == RARE, RARE_CHOSEN, EXCLUDED)
    classes[:, :3] = EXCLUDED
    classes[:, -1] = EXCLUDED
    return ids, classes


def _identity_after(model, adapter, layer):
    """Zeroes the attention and MLP outputs of every block after `layer`: those blocks pass the residual on unchanged."""
    with torch.no_grad():
        for later in range(layer + 1, len(adapters.blocks(model, adapter))):
            for module in (adapters.attn_out_module(model, adapter, later), adapters.mlp_out_module(model, adapter, later)):
                module.weight.zero_()
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()


def _loss_gradient(resid, targets, readout):
    """Returns dLoss(t)/dr(t) [N, d] of the final norm, unembedding and cross-entropy, written out by hand."""
    r = readout.centre(resid)
    d = r.shape[-1]
    s = torch.sqrt((r * r).mean(-1, keepdim=True) + readout.eps)                # [N, 1]
    probs = torch.softmax(readout.logits(resid), -1)
    probs[torch.arange(len(targets)), targets] -= 1                             # dLoss/dlogits
    u = (probs @ readout.W_U) * readout.gamma                                   # dLoss/d(normed) [N, d]
    grad = u / s - r * (r * u).sum(-1, keepdim=True) / (d * s ** 3)
    return grad - grad.mean(-1, keepdim=True) if readout.centred else grad


@pytest.mark.parametrize("chosen", [0, 3])   # 3: batches mixing corpus-order and chosen windows, and chosen alone
def test_attribution_equals_the_analytic_derivative_when_later_blocks_are_identities(family, chosen):
    model = tiny_model(family, torch.float64)
    adapter = adapters.adapter_for(model)
    _identity_after(model, adapter, 0)
    ids, classes = _batch(seqs=7, chosen=chosen)
    estimates, counts = attribution_deltas(model, adapter, ids, classes, batch_size=3)
    clean = clean_pass(model, adapter, ids, [0], 2)
    acts = clean.acts[0].flatten(0, 1)                                          # [S*L, n]
    c = acts.mean(0) - acts                                                     # [S*L, n]
    resid = torch.cat(clean.final).flatten(0, 1)                               # [S*L, d] = residual leaving block 0
    readout = readout_of(adapters.final_norm(model, adapter), model.get_output_embeddings())
    _, w_out = adapters.mlp_weights(model, adapter, 0)
    per_position = c * (_loss_gradient(resid, torch.roll(ids, -1, 1).reshape(-1), readout) @ w_out.T)   # [S*L, n]
    for name, mask in class_masks(classes.reshape(-1)).items():
        expected = per_position[mask].sum(0) / counts[name]
        assert counts[name] == int(mask.sum())
        assert (estimates[name][0] - expected).abs().max().item() <= 1e-10
        assert expected.abs().max() > 1e-3


def test_attribution_is_the_slope_of_exact_ablation_at_a_small_step():
    """Moving activations a small step eps towards the mean, the exact ΔLoss (three layers, nothing linear) is eps x the estimate."""
    model = tiny_model("gpt_neox", torch.float64, n_layers=3)
    adapter = adapters.adapter_for(model)
    ids, classes = _batch()
    estimates, _ = attribution_deltas(model, adapter, ids, classes, batch_size=2)
    clean = clean_pass(model, adapter, ids, [0], 2)
    mean_acts = clean.acts[0].flatten(0, 1).mean(0)
    eps = 1e-5
    clean.acts[0] = mean_acts - eps * (mean_acts - clean.acts[0])      # layer_deltas then shifts by eps c, not c
    exact = layer_deltas(model, adapter, clean, 0, mean_acts, torch.roll(ids, -1, 1), classes != EXCLUDED)
    slope = exact.mean(0) / eps                                         # [n] class 'all'
    assert (slope - estimates["all"][0]).abs().max().item() <= 1e-3 * estimates["all"][0].abs().max().item()
    assert estimates["all"][0].abs().max() > 1e-3


def test_attribution_rows_cover_every_layer_neuron_and_class():
    model = tiny_model("gpt2", torch.float64)
    ids, classes = _batch()
    data = EvalData(None, None, ids, classes, torch.arange(4), vocab=[])
    rows = attribution_rows(model, adapters.adapter_for(model), data, batch_size=2)
    assert rows.height == 2 * 72 * 3 and set(rows["method"]) == {"attribution"}
    assert rows.filter(rows["token_class"] == "rare")["n"].unique().to_list() == [int((classes == RARE).sum())]


def test_attribution_needs_no_weight_gradients():
    model = tiny_model("llama", torch.float64)
    adapter = adapters.adapter_for(model)
    ids, classes = _batch()
    with_grads, _ = attribution_deltas(model, adapter, ids, classes, batch_size=2)
    model.requires_grad_(False)
    without, _ = attribution_deltas(model, adapter, ids, classes, batch_size=5)
    assert all(torch.allclose(with_grads[name], without[name], atol=1e-12, rtol=0) for name in with_grads)
    assert all(p.grad is None for p in model.parameters())


def test_agreement_view_ranks_hand_written_rows():
    import duckdb
    import polars as pl

    from rtn import sql, warehouse
    con = duckdb.connect()
    sql.create_tables(con)
    exact, screen = [0.3, -0.1, 0.2, 0.0], [0.25, -0.2, 0.05, 0.1]          # ranks 4 1 3 2 and 4 1 2 3
    key = {"run_id": "r", "step": 0, "token_class": "all", "n": 9}
    warehouse.replace_rows(con, "ablation_deltas", pl.DataFrame(
        [{**key, "layer": 0, "neuron": i, "delta_loss": d, "std_err": 0.01} for i, d in enumerate(exact)]))
    warehouse.replace_rows(con, "attribution_deltas", pl.DataFrame(
        [{**key, "layer": 0, "neuron": i, "method": "attribution", "delta_loss": d} for i, d in enumerate(screen)]
        + [{**key, "layer": 1, "neuron": 0, "method": "attribution", "delta_loss": 0.5}]))   # no exact row: no agreement
    sql.apply_views(con)
    rows = con.execute("select layer, token_class, neurons, spearman, top10_overlap from attribution_agreement").fetchall()
    assert len(rows) == 1 and rows[0][:3] == (0, "all", 4) and rows[0][4] == 4
    assert abs(rows[0][3] - 0.8) < 1e-12                                       # 1 - 6 * (1 + 1) / (4 * 15)
    methods = con.execute("select method, count(*) from ablation_methods group by method order by method").fetchall()
    assert methods == [("attribution", 5), ("exact", 4)]


def test_layer_comparison_ranks_layers_by_rare_lift_and_joins_the_screen():
    import duckdb

    from rtn import sql
    con = duckdb.connect()
    sql.create_tables(con)
    sql.apply_views(con)
    # replace the upstream views with hand-written rows: this view's own logic only
    con.execute("create or replace view regime_dynamics as select * from (values "
                "('r', 0, 0, 'boost', 'plateau', 'no_plateau', true, 3, 0.03, 1.2, 0.9, -0.5), "
                "('r', 0, 1, 'boost', 'no_plateau', 'no_plateau', false, 0, 0.0, 0.1, 0.0, -0.7), "
                "('r', 0, 1, 'suppress', 'plateau', 'plateau', true, 9, 0.09, 5.0, 0.0, -0.7)) as t("
                "run_id, step, layer, sign, plateau_verdict_rare, plateau_verdict_common, has_plateau_rare, "
                "plateau_size_rare, plateau_fraction_rare, plateau_lift_rare, plateau_lift_gap, power_law_slope_rare)")
    con.execute("create or replace view attribution_agreement as select * from (values "
                "('r', 0, 1, 'rare', 0.7::double), ('r', 0, 1, 'all', 0.9::double)) as t(run_id, step, layer, token_class, spearman)")
    rows = con.execute("select layer, layers_compared, plateau_lift_rank, has_plateau_rare, attribution_spearman_rare, "
                       "attribution_spearman_all from layer_comparison order by layer").fetchall()
    assert rows == [(0, 2, 1, True, None, None), (1, 2, 2, False, 0.7, 0.9)]


def test_the_screen_riding_on_the_clean_pass_equals_its_own_pass_and_changes_nothing_there(family):
    from rtn.ingest.attribution import Screen
    model = tiny_model(family, torch.float64, n_layers=3)
    adapter = adapters.adapter_for(model)
    ids, classes = _batch()
    alone, counts = attribution_deltas(model, adapter, ids, classes, batch_size=2)
    screen = Screen(model, adapter, classes)
    carried = clean_pass(model, adapter, ids, [0, 2], 2, screen=screen)
    plain = clean_pass(model, adapter, ids, [0, 2], 2)
    riding, riding_counts = screen.estimates(ids.numel())
    assert riding_counts == counts and set(riding) == set(alone) == {"all", "common", "rare"}
    for name in alone:
        assert torch.allclose(riding[name], alone[name], rtol=0, atol=1e-12)
        assert alone[name].abs().max() > 1e-4
    for layer in (0, 2):
        assert torch.equal(carried.acts[layer], plain.acts[layer]) and not carried.acts[layer].requires_grad
    assert all(torch.equal(a, b) and not a.requires_grad for a, b in zip(carried.final, plain.final))
    assert screen.seconds > 0


def test_codes_that_share_no_sequence_share_a_backward_pass():
    from rtn.ingest.attribution import _passes
    _, classes = _batch(seqs=6, chosen=2)
    assert _passes(classes) == [[COMMON, RARE_CHOSEN], [RARE]]
    assert _passes(classes[:4]) == [[COMMON], [RARE]]                                    # corpus-order windows: two
    assert _passes(classes[4:]) == [[RARE_CHOSEN]]                                       # chosen windows: one
