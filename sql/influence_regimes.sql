-- grain (run_id, step, layer, token_class, sign, neuron): every neuron of every sorted influence
-- curve labelled with its regime under the curve's fit in regime_summary
with

influence as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        neuron,
        rank,
        delta_loss,
        influence,
        log_rank,
        log_influence,
    from neuron_influence
),

fits as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        has_plateau,
        plateau_end_rank,
        decay_start_rank,
    from regime_summary
),

final as (
    select
        influence.*,
        -- the verdict's model: plateau / power_law / decay with a plateau, else power_law / decay;
        -- NULL for curves too short to fit
        case
            when fits.decay_start_rank is null then null
            when fits.has_plateau and influence.rank <= fits.plateau_end_rank then 'plateau'
            when influence.rank < fits.decay_start_rank then 'power_law'
            else 'decay'
        end as regime,
    from influence
    left join fits using (run_id, step, layer, token_class, sign)
)

select * from final
