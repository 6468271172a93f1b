-- grain (run_id, step, layer, token_class, sign, neuron): every point of a sorted influence curve
-- with its regime, the regime's fitted line at its rank, and the curve's fit summary — all the
-- app's Influence page draws, in one read (regime_summary is costly to evaluate twice)
-- The least-squares line of ln|ΔLoss| on ln(rank) over a regime's ranks is the segment that
-- regime_summary fitted: its breakpoints delimit the same ranks.
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
    from regime_summary
),

with_lines as (
    select
        *,
        regr_slope(log_influence, log_rank) over segment as segment_slope,
        regr_intercept(log_influence, log_rank) over segment as segment_intercept,
    from labelled
    window segment as (partition by run_id, step, layer, token_class, sign, regime)
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
        fits.n_neurons,
        fits.has_plateau,
        fits.plateau_size,
        fits.plateau_fraction,
        fits.power_law_slope,
        fits.power_law_r2,
        fits.plateau_lift,
        fits.delta_bic,
    from with_lines
    left join fits using (run_id, step, layer, token_class, sign)
)

select * from final
