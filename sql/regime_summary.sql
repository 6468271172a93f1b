-- grain (run_id, step, layer, token_class, sign): the regime verdict of one sorted influence curve
-- The method (written up once, here; regime_curves, regime_cuts, regime_fits
-- and regime_readings hold the steps):
-- on x = ln(rank), y = ln|ΔLoss| the papers (Liu et al. 2025, and their notebooks) see a plateau
-- as a head of the top few neurons standing ABOVE the power law extrapolated from the middle ranks,
-- then the power law, then a rapid decay. regime_fits fits two models by least squares over
-- log-spaced candidate breakpoints: `null`, power law + decay (a continuous hinge at the decay
-- point), and `head`, a head of P ≤ n/20 ranks on its own line, free to jump, before power law +
-- decay. Here:
--   plateau_lift   mean over the head's ranks of y minus the head model's power law extrapolated
--                  to them: > 0 when the head stands above the line (the papers' "area above the
--                  linear fit" per rank). Given whatever the verdict, so step 0 has one to compare.
--   lift_threshold the noise the lift must clear: 3 root-mean-square residuals of the power law
--                  about its own line over its own ranks, and at least ln 1.25 (a 25 % lift).
--                  Sorting lifts the top ranks of any noisy curve a little; this, not BIC, is what
--                  rejects curves without a plateau (tests/unit/test_regimes.py: the null curves).
--   has_plateau    all of: the head model beats the null by BIC (n ln(SSE/n) + k ln n, k = 7: two
--                  lines' intercepts and slopes, the decay's slope, P and d; against 4) by more
--                  than 10; plateau_lift > lift_threshold; the power law spans an e-fold of rank
--                  (by the grid); and the curve is evidence (below).
--   plateau_verdict 'insufficient_evidence' when most of the curve's neurons lie within 2 standard
--                  errors of zero (regime_readings.share_within_noise > 0.5): sorted noise, no verdict;
--                  else 'plateau' (has_plateau) or 'no_plateau'.
--   flattened_head the opposite shape, a different fact: the head model wins by BIC, its head is
--                  flatter than half the power law's slope and lies below the extrapolated line
--                  (plateau_lift < -lift_threshold). What rtn called a plateau before issue 13.
--   paper_*        the papers' own reading, fixed ln-rank window [3.5, 5.5] (see regime_readings).
-- Curves with fewer than 6 neurons are left out; with fewer than 60 they have no head (n/20 < 3).
-- Scaling every ΔLoss by a constant shifts y only: no verdict changes.
-- analysis_regime_fits (analyses/regimes.py) cross-checks the head model with a robust Huber fit.
with

fits as (
    select * from regime_fits
),

readings as (
    select * from regime_readings
),

laws as (
    select
        fits.*,
        readings.* exclude (run_id, step, layer, token_class, sign),
        head_fit.power_law as head_law,  -- the head model's power law: its line and sums
    from fits
    left join readings using (run_id, step, layer, token_class, sign)
),

head_tests as (
    select
        *,
        (head_fit.head_y - head_law.intercept * head_fit.head_size - head_law.slope * head_fit.head_x)
            / head_fit.head_size as plateau_lift,
        greatest(
            3 * sqrt(greatest(line_sse(head_law.intercept, head_law.slope, head_law.m, head_law.x, head_law.y,
                                       head_law.xx, head_law.xy, head_law.yy), 0) / head_law.m),
            ln(1.25)
        ) as lift_threshold,
        bic(greatest(null_fit.sse, sse_resolution), n_neurons, 4) as null_bic,
        bic(greatest(head_fit.sse, sse_resolution), n_neurons, 7) as head_bic,
        null_bic - head_bic as delta_bic,  -- > 0: the head model fits better
        ln(head_fit.decay_end / head_fit.head_size) as power_law_span,
    from laws
),

verdicts as (
    select
        head_tests.*,
        coalesce(share_within_noise > 0.5, false) as insufficient,
        coalesce(not insufficient and delta_bic > 10 and plateau_lift > lift_threshold and power_law_span >= 1,
                 false) as has_plateau,
        coalesce(not insufficient and delta_bic > 10 and plateau_lift < -lift_threshold
                 and abs(head_fit.head_slope) < 0.5 * abs(head_law.slope), false) as flattened_head,
        -- the verdict's model: the head model with a plateau, else power law + decay
        case when has_plateau then head_fit.power_law else null_fit.power_law end as power_law,
        case when has_plateau then head_fit else null_fit end as chosen,
    from head_tests
),

final as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        n_neurons,
        case when insufficient then 'insufficient_evidence' when has_plateau then 'plateau' else 'no_plateau' end
            as plateau_verdict,
        has_plateau,
        flattened_head,
        case when has_plateau then head_fit.head_size end as plateau_end_rank,
        chosen.decay_end + 1 as decay_start_rank,
        case when has_plateau then head_fit.head_size else 0 end as plateau_size,
        case when has_plateau then head_fit.head_size else 0 end / n_neurons as plateau_fraction,
        power_law.slope as power_law_slope,
        -- R² of the power law about its line over its own ranks
        1 - greatest(line_sse(power_law.intercept, power_law.slope, power_law.m, power_law.x, power_law.y,
                              power_law.xx, power_law.xy, power_law.yy), 0)
            / nullif(centred(power_law.yy, power_law.y, power_law.y, power_law.m), 0) as power_law_r2,
        plateau_lift,
        lift_threshold,
        delta_bic,
        share_within_noise,
        -- the verdict's fitted lines, ln|ΔLoss| = intercept + slope ln(rank) (plateau: NULL without)
        case when has_plateau then head_fit.head_intercept end as fitted_plateau_intercept,
        case when has_plateau then head_fit.head_slope end as fitted_plateau_slope,
        power_law.intercept as fitted_power_law_intercept,
        chosen.decay_intercept as fitted_decay_intercept,
        chosen.decay_slope as fitted_decay_slope,
        -- both models as fitted, whatever the verdict
        head_fit.head_size as head_size,
        head_fit.head_intercept as head_intercept,
        head_fit.head_slope as head_slope,
        head_law.intercept as head_power_law_intercept,
        head_law.slope as head_power_law_slope,
        head_fit.decay_end + 1 as head_decay_start_rank,
        head_fit.decay_slope as head_decay_slope,
        power_law_span,
        head_bic,
        null_fit.power_law.intercept as null_power_law_intercept,
        null_fit.power_law.slope as null_power_law_slope,
        null_fit.decay_end + 1 as null_decay_start_rank,
        null_fit.decay_slope as null_decay_slope,
        null_bic,
        paper_power_law_slope,
        paper_power_law_intercept,
        paper_plateau_size,
        paper_plateau_lift,
    from verdicts
)

select * from final
