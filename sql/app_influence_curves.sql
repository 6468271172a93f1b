-- grain (run_id, step, layer, token_class, sign, neuron): every point of a sorted influence curve
-- with its regime, the lines the app's Influence page draws at its rank, and the curve's verdict,
-- in one read of regime_summary (costly to evaluate twice; a filter on run and step reaches the
-- scan, so the page pays for one checkpoint)
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
    from neuron_influence
),

fits as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        n_neurons,
        plateau_verdict,
        has_plateau,
        flattened_head,
        plateau_end_rank,
        decay_start_rank,
        plateau_size,
        plateau_fraction,
        power_law_slope,
        power_law_r2,
        plateau_lift,
        lift_threshold,
        delta_bic,
        fitted_plateau_intercept,
        fitted_plateau_slope,
        fitted_power_law_intercept,
        fitted_decay_intercept,
        fitted_decay_slope,
        head_size,
        head_intercept,
        head_slope,
        head_power_law_intercept,
        head_power_law_slope,
        head_decay_start_rank,
    from regime_summary
),

labelled as (
    select
        influence.*,
        fits.* exclude (run_id, step, layer, token_class, sign),
        regime_label(influence.rank, fits.has_plateau, fits.plateau_end_rank, fits.decay_start_rank) as regime,
    from influence
    left join fits using (run_id, step, layer, token_class, sign)
),

final as (
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
        regime,
        case regime
            when 'plateau' then fitted_plateau_slope
            when 'power_law' then power_law_slope
            when 'decay' then fitted_decay_slope
        end as segment_slope,                -- d ln|ΔLoss| / d ln(rank) of the regime's line
        -- the regime's fitted line at this rank, in |ΔLoss| units
        exp(case regime
            when 'plateau' then fitted_plateau_intercept + fitted_plateau_slope * log_rank
            when 'power_law' then fitted_power_law_intercept + power_law_slope * log_rank
            when 'decay' then fitted_decay_intercept + fitted_decay_slope * log_rank
        end) as fitted_influence,
        -- the head model whatever the verdict: the head's own line over its ranks, and its power
        -- law extrapolated back from its last rank to rank 1 (the lift is the gap between them)
        case when rank <= head_size then exp(head_intercept + head_slope * log_rank) end as head_line,
        case when rank < head_decay_start_rank
            then exp(head_power_law_intercept + head_power_law_slope * log_rank) end as power_law_line,
        n_neurons,
        plateau_verdict,
        has_plateau,
        flattened_head,
        plateau_size,
        plateau_fraction,
        power_law_slope,
        power_law_r2,
        plateau_lift,
        lift_threshold,
        delta_bic,
        head_size,
    from labelled
)

select * from final
