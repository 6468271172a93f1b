-- grain (run_id, step, layer, neuron, token_class): first-order estimate of a neuron's mean-ablation
-- ΔLoss at every MLP layer, the attribution screen (ingest/attribution.py): sum over positions of
-- c(t, i) · dLoss/da(t, i), c = mean activation − activation; exact rows live in ablation_deltas
create table if not exists attribution_deltas (
    run_id varchar,
    step bigint,
    layer integer,
    neuron integer,
    token_class varchar,      -- rare, common, all
    method varchar,           -- 'attribution' (ablation_methods names ablation_deltas' rows 'exact')
    delta_loss double,        -- first-order estimate of the class's mean loss(ablated) - loss(clean)
    n integer,                -- predictions in the class
    primary key (run_id, step, layer, neuron, token_class)
);
