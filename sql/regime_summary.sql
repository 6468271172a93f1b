-- grain (run_id, step, layer, token_class, sign): the regime fit of one sorted influence curve
--
-- On x = ln(rank), y = ln|ΔLoss| (neuron_influence) two continuous piecewise lines are fitted by
-- least squares, with hinges at breakpoints, a breakpoint being the last rank of a segment (the
-- hinge sits on it, at x = ln(breakpoint)):
--   two segments   (power law, decay)          y = α + β x + γ (x - ln b)+
--   three segments (plateau, power law, decay) y = α + β x + γ1 (x - ln b1)+ + γ2 (x - ln b2)+
-- Candidate breakpoints ("cuts") are the last ranks of log-spaced buckets 5 % of rank wide (every
-- rank below 20). Running sums of x, y, x², xy, y² at each cut, and of its hinge h = (x - ln cut)+
-- against 1, x, h and y over the ranks after it, give any fit's normal equations in O(1): 2 x 2
-- (one hinge) or 3 x 3 (two hinges) once the intercept is eliminated, solved in closed form.
-- The search is exhaustive: every cut for two segments, every pair of cuts for three. On smoothly
-- bending curves the squared error has several local minima, and a stepwise search (best single
-- break, then the best second one) stops in the wrong one.
-- Every segment keeps at least 3 neurons, and the power law spans at least one e-fold of rank
-- (b2 ≥ e·b1): a straight stretch over fewer scales is a bend, not a power law. Without that,
-- the second breakpoint goes where the curve bends most after the first, the curvature of the
-- decay tail (ln|ΔLoss| of near-zero effects plunges) or the rounded corner sorting leaves before
-- a noisy decay, and the fit calls the whole power law a "plateau".
-- A plateau is supported (has_plateau) only when three segments beat two by
-- BIC = n·ln(SSE/n) + k·ln(n), k = 6 (intercept, 3 slopes, 2 breakpoints) against 4, and the
-- first segment is clearly flatter than the second: |slope 1| < ½·|slope 2|. (|slope 1| <
-- |slope 2| alone passes on any bend of a sorted noisy curve: sorting smooths the noise away,
-- and BIC takes the residuals as independent.)
-- Curves with fewer than 6 neurons are left out; with fewer than 9 they get no three-segment fit.
--
-- analysis_regime_fits (analyses/regimes.py) cross-checks the breakpoints: the same continuous
-- line fitted with a Huber loss and free breakpoints, started from these.
with

influence as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        log_influence,
    from neuron_influence
),

sorted_curves as (
    -- each curve's ln|ΔLoss| as one list sorted descending: the order of neuron_influence.rank
    -- (neurons tied in |ΔLoss| are interchangeable in every sum below), but DuckDB sorts lists
    -- about 4x faster than it evaluates row_number() (which this leaves unused, so not run)
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        list_reverse_sort(list(log_influence)) as ys,
    from influence
    group by run_id, step, layer, token_class, sign
),

ranked as (
    -- one row per neuron again. Read once only: a plan that shares (materializes) these rows
    -- would store each curve's whole list with every one of its neurons
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        generate_subscripts(ys, 1) as rank,
        ln(rank) as x,
        unnest(ys) as y,
    from sorted_curves
),

buckets as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        cast(floor(x / 0.05) as integer) as bucket,  -- ranks within 5 % of each other
        max(rank) as cut,
        sum(x) as bucket_x,
        sum(y) as bucket_y,
        sum(x * x) as bucket_xx,
        sum(x * y) as bucket_xy,
        sum(y * y) as bucket_yy,
    from ranked
    group by all
),

running_sums as (
    -- sums over ranks 1..cut (head) and over the whole curve (total)
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        cut,
        max(cut) over curve as n_neurons,
        sum(bucket_x) over running as sum_x,
        sum(bucket_y) over running as sum_y,
        sum(bucket_xx) over running as sum_xx,
        sum(bucket_xy) over running as sum_xy,
        sum(bucket_yy) over running as sum_yy,
        sum(bucket_x) over curve as total_x,
        sum(bucket_y) over curve as total_y,
        sum(bucket_xx) over curve as total_xx,
        sum(bucket_xy) over curve as total_xy,
        sum(bucket_yy) over curve as total_yy,
    from buckets
    window
        curve as (partition by run_id, step, layer, token_class, sign),
        running as (
            partition by run_id, step, layer, token_class, sign
            order by bucket
            rows between unbounded preceding and current row
        )
),

cuts as materialized (
    -- every cut with the curve's centred sums and the sums of its hinge h = (x - u)+, u = ln(cut),
    -- over the ranks after it (tail sums = total - head): h, x h, h², y h. Materialized: five
    -- steps below read it.
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        cut,
        n_neurons,
        ln(cut) as u,
        sum_x,
        sum_y,
        sum_xx,
        sum_xy,
        sum_yy,
        total_x,
        total_y,
        total_xx - total_x ** 2 / n_neurons as curve_cxx,
        total_xy - total_x * total_y / n_neurons as curve_cxy,
        total_yy - total_y ** 2 / n_neurons as curve_cyy,
        (total_x - sum_x) - u * (n_neurons - cut) as hinge_h,
        (total_xx - sum_xx) - u * (total_x - sum_x) as hinge_xh,
        (total_xx - sum_xx) - 2 * u * (total_x - sum_x) + u ** 2 * (n_neurons - cut) as hinge_hh,
        (total_xy - sum_xy) - u * (total_y - sum_y) as hinge_yh,
        -- squared errors below the rounding error of the running sums count as an exact fit,
        -- so noise-free curves tie and the tie goes to the smallest breakpoints
        1e-10 * (1 + total_yy) as sse_resolution,
    from running_sums
    where cut >= 3 and n_neurons - cut >= 3
),

two_segment_grams as (
    -- the normal equations of y = α + β x + γ h, centred (α eliminated): [[g11, g12], [g12, g22]]
    -- [β, γ] = [curve_cxy, m2]
    select
        *,
        curve_cxx as g11,
        hinge_xh - total_x * hinge_h / n_neurons as g12,
        hinge_hh - hinge_h ** 2 / n_neurons as g22,
        hinge_yh - hinge_h * total_y / n_neurons as m2,
        g11 * g22 - g12 ** 2 as det,
    from cuts
),

two_segment_lines as (
    select
        *,
        (g22 * curve_cxy - g12 * m2) / det as beta,
        (g11 * m2 - g12 * curve_cxy) / det as gamma,
        curve_cyy - (beta * curve_cxy + gamma * m2) as sse,
        (total_y - beta * total_x - gamma * hinge_h) / n_neurons as intercept,
    from two_segment_grams
    where det > 0
),

two_segments as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        arg_min(
            {
                'b': cut,
                'sse': sse,
                -- the power law's line and the sums over its ranks (1..cut)
                'power_law': {
                    'intercept': intercept, 'slope': beta,
                    'm': cut, 'x': sum_x, 'y': sum_y, 'xx': sum_xx, 'xy': sum_xy, 'yy': sum_yy,
                },
                'decay_slope': beta + gamma,
                'decay_intercept': intercept - gamma * u,
            },
            (greatest(sse, sse_resolution), cut)
        ) as fit,
    from two_segment_lines
    group by run_id, step, layer, token_class, sign
),

pair_grams as (
    -- every pair of cuts a < b that leaves the power law an e-fold of rank and 3 neurons, with
    -- the normal equations of y = α + β x + γ1 h1 + γ2 h2 (hinges at a and b), centred:
    -- G [β, γ1, γ2] = [m1, m2, m3], G symmetric with upper triangle g11 .. g33
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        a.cut as b1,
        b.cut as b2,
        a.sse_resolution,
        a.curve_cyy,
        a.curve_cxx as g11,
        a.hinge_xh - a.total_x * a.hinge_h / a.n_neurons as g12,
        b.hinge_xh - a.total_x * b.hinge_h / a.n_neurons as g13,
        a.hinge_hh - a.hinge_h ** 2 / a.n_neurons as g22,
        -- over the ranks after b, h1 h2 = (h2 + u_b - u_a) h2
        b.hinge_hh + (b.u - a.u) * b.hinge_h - a.hinge_h * b.hinge_h / a.n_neurons as g23,
        b.hinge_hh - b.hinge_h ** 2 / a.n_neurons as g33,
        a.curve_cxy as m1,
        a.hinge_yh - a.hinge_h * a.total_y / a.n_neurons as m2,
        b.hinge_yh - b.hinge_h * a.total_y / a.n_neurons as m3,
    from cuts as a
    inner join cuts as b using (run_id, step, layer, token_class, sign)
    where b.u - a.u >= 1 and b.cut - a.cut >= 3
),

pair_adjugates as (
    -- G's adjugate (symmetric, k11 .. k33) and determinant: G⁻¹ = adjugate / det
    select
        *,
        g22 * g33 - g23 ** 2 as k11,
        g13 * g23 - g12 * g33 as k12,
        g12 * g23 - g13 * g22 as k13,
        g11 * g33 - g13 ** 2 as k22,
        g12 * g13 - g11 * g23 as k23,
        g11 * g22 - g12 ** 2 as k33,
        g11 * k11 + g12 * k12 + g13 * k13 as det,
    from pair_grams
),

pair_lines as (
    select
        *,
        (k11 * m1 + k12 * m2 + k13 * m3) / det as beta,
        (k12 * m1 + k22 * m2 + k23 * m3) / det as gamma1,
        (k13 * m1 + k23 * m2 + k33 * m3) / det as gamma2,
        curve_cyy - (beta * m1 + gamma1 * m2 + gamma2 * m3) as sse,
    from pair_adjugates
    where det > 0
),

best_pairs as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        arg_min(
            {'b1': b1, 'b2': b2, 'sse': sse, 'beta': beta, 'gamma1': gamma1, 'gamma2': gamma2},
            (greatest(sse, sse_resolution), b1, b2)
        ) as fit,
    from pair_lines
    group by run_id, step, layer, token_class, sign
),

three_segments as (
    -- the best pair's three lines, with the sums over the plateau (ranks 1..b1, from cut a) and
    -- the power law (b1 + 1..b2, cut b minus cut a)
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        fit.b1,
        fit.b2,
        fit.sse,
        -- segment by segment, the fitted line is intercept + slope x
        fit.beta as plateau_slope,
        (a.total_y - fit.beta * a.total_x - fit.gamma1 * a.hinge_h - fit.gamma2 * b.hinge_h) / a.n_neurons
            as plateau_intercept,
        {
            'intercept': plateau_intercept - fit.gamma1 * a.u,
            'slope': fit.beta + fit.gamma1,
            'm': b.cut - a.cut,
            'x': b.sum_x - a.sum_x,
            'y': b.sum_y - a.sum_y,
            'xx': b.sum_xx - a.sum_xx,
            'xy': b.sum_xy - a.sum_xy,
            'yy': b.sum_yy - a.sum_yy,
        } as power_law,
        fit.beta + fit.gamma1 + fit.gamma2 as decay_slope,
        plateau_intercept - fit.gamma1 * a.u - fit.gamma2 * b.u as decay_intercept,
        a.sum_x as plateau_x,
        a.sum_y as plateau_y,
    from best_pairs
    inner join cuts as a using (run_id, step, layer, token_class, sign)
    inner join cuts as b using (run_id, step, layer, token_class, sign)
    where a.cut = best_pairs.fit.b1 and b.cut = best_pairs.fit.b2
),

three_segment_fits as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        b1,
        b2,
        sse,
        plateau_slope,
        plateau_intercept,
        power_law,
        decay_slope,
        decay_intercept,
        -- mean of y minus the power law extrapolated over the plateau's ranks
        (plateau_y - power_law.intercept * b1 - power_law.slope * plateau_x) / b1 as plateau_lift,
    from three_segments
),

curves as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        any_value(n_neurons) as n_neurons,
        any_value(sse_resolution) as sse_resolution,
    from cuts
    group by run_id, step, layer, token_class, sign
),

compared as (
    select
        curves.*,
        three_segment_fits as three,
        two_segments.fit as two,
        -- BIC with k = 6 (intercept, 3 slopes, 2 breakpoints) against 4 (intercept, 2 slopes,
        -- 1 breakpoint); greatest() skips NULLs, hence the explicit case for curves without a fit
        case when three_segment_fits.sse is not null then
            n_neurons * ln(greatest(three_segment_fits.sse, sse_resolution) / n_neurons) + 6 * ln(n_neurons)
        end as three_seg_bic,
        case when two_segments.fit is not null then
            n_neurons * ln(greatest(two_segments.fit.sse, sse_resolution) / n_neurons) + 4 * ln(n_neurons)
        end as two_seg_bic,
    from curves
    left join three_segment_fits using (run_id, step, layer, token_class, sign)
    left join two_segments using (run_id, step, layer, token_class, sign)
),

verdicts as (
    select
        *,
        coalesce(
            three_seg_bic < two_seg_bic
                and abs(three.plateau_slope) < 0.5 * abs(three.power_law.slope),
            false
        ) as has_plateau,
        -- the verdict's power law: its line and the sums over its ranks
        case when has_plateau then three.power_law else two.power_law end as power_law,
    from compared
),

final as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        n_neurons,
        -- the model the verdict picks: three segments when has_plateau, else power law + decay
        case when has_plateau then three.b1 end as plateau_end_rank,
        case when has_plateau then three.b2 + 1 else two.b + 1 end as decay_start_rank,
        case when has_plateau then three.b1 else 0 end as plateau_size,
        case when has_plateau then three.b1 else 0 end / n_neurons as plateau_fraction,
        power_law.slope as power_law_slope,
        -- R² of the power law: its squared error about the fitted line over its own ranks
        1 - greatest(
            power_law.yy - 2 * power_law.intercept * power_law.y - 2 * power_law.slope * power_law.xy
                + power_law.intercept ** 2 * power_law.m + 2 * power_law.intercept * power_law.slope * power_law.x
                + power_law.slope ** 2 * power_law.xx,
            0
        ) / nullif(power_law.yy - power_law.y ** 2 / power_law.m, 0) as power_law_r2,
        -- the fitted first segment's mean lift above the power law extrapolated to its ranks;
        -- given also where has_plateau is false, so a step-0 baseline has a value to compare with
        three.plateau_lift as plateau_lift,
        has_plateau,
        -- the verdict's fitted line, segment by segment: ln|ΔLoss| = intercept + slope ln(rank)
        -- (plateau columns NULL without a plateau; the power law's slope is power_law_slope)
        case when has_plateau then three.plateau_intercept end as fitted_plateau_intercept,
        case when has_plateau then three.plateau_slope end as fitted_plateau_slope,
        power_law.intercept as fitted_power_law_intercept,
        case when has_plateau then three.decay_intercept else two.decay_intercept end as fitted_decay_intercept,
        case when has_plateau then three.decay_slope else two.decay_slope end as fitted_decay_slope,
        -- both fits as fitted, whatever the verdict
        three.b1 as three_seg_plateau_end_rank,
        three.b2 + 1 as three_seg_decay_start_rank,
        three.plateau_slope as three_seg_plateau_slope,
        three.power_law.slope as three_seg_power_law_slope,
        three.decay_slope as three_seg_decay_slope,
        three_seg_bic,
        two.b + 1 as two_seg_decay_start_rank,
        two.power_law.slope as two_seg_power_law_slope,
        two.decay_slope as two_seg_decay_slope,
        two_seg_bic,
        two_seg_bic - three_seg_bic as delta_bic,  -- > 0: three segments fit better
    from verdicts
)

select * from final
