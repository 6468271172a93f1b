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
        regime_label(influence.rank, fits.has_plateau, fits.plateau_end_rank, fits.decay_start_rank) as regime,
    from influence
    left join fits using (run_id, step, layer, token_class, sign)
)

select * from final
