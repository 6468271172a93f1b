-- grain (run_id, step, layer, neuron, token_class, method): a neuron's mean-ablation ΔLoss by each
-- method: 'exact' (ablation_deltas: the studied layers) and 'attribution' (attribution_deltas: the
-- first-order screen of every layer)
with

exact as (
    select run_id, step, layer, neuron, token_class, 'exact' as method, delta_loss, std_err, n
    from ablation_deltas
),

attribution as (
    select run_id, step, layer, neuron, token_class, method, delta_loss, null::double as std_err, n
    from attribution_deltas
),

final as (
    select * from exact
    union all
    select * from attribution
)

select * from final
