-- grain (run_id, step, layer, token_class): how well the attribution screen ranks a layer's neurons,
-- where exact ablation exists too: Spearman rank correlation of the two ΔLoss estimates (Pearson r
-- of their ranks, ties ranked in neuron order), Pearson r of the values, and how many of the exact
-- top-10 by |ΔLoss| the screen's top-10 holds
with

paired as (
    select
        exact.run_id,
        exact.step,
        exact.layer,
        exact.token_class,
        exact.neuron,
        exact.delta_loss as exact_delta,
        attribution.delta_loss as attribution_delta,
    from ablation_deltas as exact
    inner join attribution_deltas as attribution
        using (run_id, step, layer, neuron, token_class)
),

ranked as (
    select
        *,
        row_number() over (partition by run_id, step, layer, token_class order by exact_delta, neuron) as exact_rank,
        row_number() over (partition by run_id, step, layer, token_class order by attribution_delta, neuron)
            as attribution_rank,
        row_number() over (partition by run_id, step, layer, token_class order by abs(exact_delta) desc, neuron)
            as exact_top,
        row_number() over (partition by run_id, step, layer, token_class order by abs(attribution_delta) desc, neuron)
            as attribution_top,
    from paired
),

final as (
    select
        run_id,
        step,
        layer,
        token_class,
        count(*) as neurons,
        corr(exact_rank, attribution_rank) as spearman,             -- rank agreement, signed ΔLoss
        corr(exact_delta, attribution_delta) as pearson,
        count(*) filter (where exact_top <= 10 and attribution_top <= 10) as top10_overlap,
    from ranked
    group by run_id, step, layer, token_class
)

select * from final
