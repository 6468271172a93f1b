-- grain (run_id, step, layer, token_class, sign, neuron): every point of a sorted influence curve
-- with its regime, the regime's fitted line at its rank, and the curve's fit summary — all the
-- app's Influence page draws, in one read (regime_summary is costly to evaluate twice)
with

labelled as (
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
        regime,
    from influence_regimes
),

fits as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        n_neurons,
        has_plateau,
        plateau_size,
        plateau_fraction,
        power_law_slope,
        power_law_r2,
        plateau_lift,
        delta_bic,
        fitted_plateau_intercept,
        fitted_plateau_slope,
        fitted_power_law_intercept,
        fitted_decay_intercept,
        fitted_decay_slope,
    from regime_summary
),

with_lines as (
    -- each point's segment of the continuous line regime_summary fitted
    select
        labelled.*,
        fits.* exclude (run_id, step, layer, token_class, sign),
        case labelled.regime
            when 'plateau' then fits.fitted_plateau_slope
            when 'power_law' then fits.power_law_slope
            when 'decay' then fits.fitted_decay_slope
        end as segment_slope,
        case labelled.regime
            when 'plateau' then fits.fitted_plateau_intercept
            when 'power_law' then fits.fitted_power_law_intercept
            when 'decay' then fits.fitted_decay_intercept
        end as segment_intercept,
    from labelled
    left join fits using (run_id, step, layer, token_class, sign)
),

final as (
    select
        with_lines.run_id,
        with_lines.step,
        with_lines.layer,
        with_lines.token_class,
        with_lines.sign,
        with_lines.neuron,
        with_lines.rank,
        with_lines.delta_loss,
        with_lines.influence,
        with_lines.regime,                   -- NULL: the curve is too short to fit
        with_lines.segment_slope,            -- d ln|ΔLoss| / d ln(rank) of the regime's line
        -- the regime's fitted line at this rank, in |ΔLoss| units
        case when with_lines.regime is not null
            then exp(with_lines.segment_intercept + with_lines.segment_slope * with_lines.log_rank)
        end as fitted_influence,
        with_lines.n_neurons,
        with_lines.has_plateau,
        with_lines.plateau_size,
        with_lines.plateau_fraction,
        with_lines.power_law_slope,
        with_lines.power_law_r2,
        with_lines.plateau_lift,
        with_lines.delta_bic,
    from with_lines
)

select * from final
