-- grain (run_id, step, layer, token_class, sign, neuron): one neuron's influence on one class of
-- predictions, ranked within its sorted influence curve (run_id, step, layer, token_class, sign)
-- Neurons whose ablation changes the loss by exactly zero belong to neither sign and are left out.
with

deltas as (
    select
        run_id,
        step,
        layer,
        token_class,
        neuron,
        delta_loss,
        std_err,
    from ablation_deltas
    where delta_loss <> 0
),

signed as (
    select
        run_id,
        step,
        layer,
        token_class,
        -- boost: ablating the neuron raises the loss (it helps); suppress: ablating lowers it
        case when delta_loss > 0 then 'boost' else 'suppress' end as sign,
        neuron,
        delta_loss,
        std_err,
    from deltas
),

ranked as (
    select
        *,
        abs(delta_loss) as influence,
        -- 1 = most influential; ties broken by neuron so every curve is a strict order
        row_number() over (
            partition by run_id, step, layer, token_class, sign
            order by abs(delta_loss) desc, neuron
        ) as rank,
    from signed
),

final as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        neuron,
        delta_loss,
        std_err,                         -- of delta_loss (ablation_deltas)
        influence,
        rank,
        ln(rank) as log_rank,            -- natural log: the x axis of the regime fit
        ln(influence) as log_influence,  -- natural log: the y axis of the regime fit
    from ranked
)

select * from final
