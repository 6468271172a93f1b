-- grain (run_id, step, layer, token_class, sign): the regime fit of one sorted influence curve
--
-- On x = ln(rank), y = ln|ΔLoss| (neuron_influence) two continuous piecewise lines are fitted,
-- with hinges at breakpoints, a breakpoint being the last rank of a segment (the hinge sits on
-- it, at x = ln(breakpoint)):
--   two segments   (power law, decay)          y = α + β x + γ (x - ln b)+
--   three segments (plateau, power law, decay) y = α + β x + γ1 (x - ln b1)+ + γ2 (x - ln b2)+
-- Candidate breakpoints ("cuts") are the last ranks of log-spaced buckets 5 % of rank wide (every
-- rank below 20); those that also end a bucket 10 % wide are "coarse" cuts (every rank below 10,
-- then about every second cut). Running sums of 1, x, y, x², xy, y² at each cut, and of its
-- hinge h = (x - ln cut)+ against 1, x, h and y over the ranks after it, give any fit's normal
-- equations in O(1): 2 x 2 (one hinge) or 3 x 3 (two hinges) once the intercept is eliminated,
-- solved in closed form. The fit takes two iterations:
--   1. least squares, exhaustive: every cut for two segments, every pair of coarse cuts for three
--      (on smoothly bending curves the squared error has several local minima, and a stepwise
--      search, best single break then the best second one, stops in the wrong one);
--   2. one Huber step for three segments: weighted least squares with the Huber weights of
--      iteration 1's residuals r, w = min(1, k / |r|), k = 1.345 robust standard deviations
--      (1.4826 MAD of r, at least 1e-3), both breakpoints searched again among all cuts within
--      0.5 of ln rank of iteration 1's. ln|ΔLoss| plunges at the smallest effects (the last few
--      neurons of a curve, their |ΔLoss| often far below its standard error, lie nats below the
--      decay's line), and least squares lets those few points pull both breakpoints by 10 % of
--      rank or more; the Huber step is where a robust fit of the whole curve puts them.
-- Three segments are reported as iteration 2 fits them (iteration 1's breakpoints stay as ls_*
-- columns); two segments, the model without a plateau, as iteration 1 fits them.
-- The two iterations spell the same search out twice: SQL has no function over rows, a recursive
-- CTE made the view ~4x slower and kept a filter on it (one run, one step) from reaching the
-- scan, and DuckDB refuses a table macro that reads its own output. Iteration 1 pairs coarse cuts
-- only to keep the whole view under a second on a Pythia-410M-sized run (154 checkpoints x 4096
-- neurons x 3 classes; tests/bench_regimes.py); iteration 2 returns the fine grid.
-- Every segment keeps at least 3 neurons, and the power law spans at least one e-fold of rank
-- (b2 ≥ e·b1): a straight stretch over fewer scales is a bend, not a power law. Without that,
-- the second breakpoint goes where the curve bends most after the first, the curvature of the
-- decay tail or the rounded corner sorting leaves before a noisy decay, and the fit calls the
-- whole power law a "plateau".
-- A plateau is supported (has_plateau) only when three segments beat two by
-- BIC = n·ln(SSE/n) + k·ln(n), k = 6 (intercept, 3 slopes, 2 breakpoints) against 4, both fitted
-- by least squares on the coarse cuts (BIC is a least-squares criterion; one grid for both models
-- keeps the comparison fair), and the reported first segment is clearly flatter than the second:
-- |slope 1| < ½·|slope 2|. (|slope 1| < |slope 2| alone passes on any bend of a sorted noisy
-- curve: sorting smooths the noise away, and BIC takes the residuals as independent.)
-- Curves with fewer than 6 neurons are left out; with fewer than 9 they get no three-segment fit.
--
-- analysis_regime_fits (analyses/regimes.py) cross-checks the breakpoints: the same continuous
-- line fitted by scipy with a Huber loss and free breakpoints, started from these, and an
-- independent grid search that never sees them.
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

sorted_curves as not materialized (
    -- each curve's ln|ΔLoss| as one list sorted descending: the order of neuron_influence.rank
    -- (neurons tied in |ΔLoss| are interchangeable in every sum below), but DuckDB sorts lists
    -- about 4x faster than it evaluates row_number() (which this leaves unused, so not run).
    -- Read by both iterations, and sorted for each: materialized, a filter on the view would not
    -- reach it through `cuts` (see there).
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

-- ---- iteration 1: least squares, every cut, every pair of coarse cuts ---------------------------

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
        -- a coarse cut also ends a bucket 10 % of rank wide: the next bucket lies in another one
        bucket // 2 < coalesce(lead(bucket) over running, bucket + 2) // 2 as coarse,
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
    -- over the ranks after it (tail sums = total - head): h, x h, h², y h. Materialized: the
    -- searches and the sums of the reported segments read it (and no other step is materialized:
    -- DuckDB pushes a filter on the view, one run or step, into one level of materialized steps
    -- only, so the scan would read every curve).
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        cut,
        coarse,
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
                'n_neurons': n_neurons,
                'sse_resolution': sse_resolution,
                -- segment by segment, the fitted line is intercept + slope x; the power law's
                -- sums are over its ranks, 1..cut
                'power_law': {
                    'intercept': intercept, 'slope': beta,
                    'm': cut, 'x': sum_x, 'y': sum_y, 'xx': sum_xx, 'xy': sum_xy, 'yy': sum_yy,
                },
                'decay_intercept': intercept - gamma * u,
                'decay_slope': beta + gamma,
            },
            (greatest(sse, sse_resolution), cut)
        ) as fit,
        -- the least squared error on iteration 1's grid for three segments, for the verdict
        min(sse) filter (where coarse) as coarse_sse,
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
        a.n_neurons,
        a.total_x,
        a.total_y,
        a.hinge_h as hinge_h1,
        b.hinge_h as hinge_h2,
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
    where a.coarse and b.coarse and b.u - a.u >= 1 and b.cut - a.cut >= 3
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

least_squares_pairs as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        arg_min(
            {
                'b1': b1,
                'b2': b2,
                'intercept': (total_y - beta * total_x - gamma1 * hinge_h1 - gamma2 * hinge_h2) / n_neurons,
                'beta': beta,
                'gamma1': gamma1,
                'gamma2': gamma2,
                'sse': sse,
            },
            (greatest(sse, sse_resolution), b1, b2)
        ) as fit,
    from pair_lines
    group by run_id, step, layer, token_class, sign
),

-- ---- iteration 2: one Huber step for three segments, breakpoints within 0.5 of ln rank -------

huber_residuals as (
    -- iteration 1's residual at every rank i (the lambda reads the line as `fit`: DuckDB takes
    -- `start.intercept` there for a table named start)
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        sorted_curves.ys,
        least_squares_pairs.fit as start,
        list_transform(
            ys,
            lambda y, i: y - (
                fit.intercept + fit.beta * ln(i) + fit.gamma1 * greatest(ln(i) - ln(fit.b1), 0)
                + fit.gamma2 * greatest(ln(i) - ln(fit.b2), 0)
            )
        ) as residuals,
    from sorted_curves
    inner join least_squares_pairs using (run_id, step, layer, token_class, sign)
),

huber_medians as (
    -- (one step per statistic: DuckDB substitutes a column alias's expression where it is used,
    -- which inside a lambda would repeat a median for every element)
    select
        *,
        list_median(residuals) as residual_median,
    from huber_residuals
),

huber_scales as (
    select
        *,
        greatest(
            1.345 * 1.4826 * list_median(list_transform(residuals, lambda r: abs(r - residual_median))),
            1e-3
        ) as huber_scale,
    from huber_medians
),

huber_points as (
    -- one row per neuron with its Huber weight, and (constant per curve) iteration 1's fit and
    -- the threshold. Read once only, as `ranked`
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        start,
        huber_scale,
        generate_subscripts(ys, 1) as rank,
        ln(rank) as x,
        unnest(ys) as y,
        unnest(list_transform(residuals, lambda r: if(abs(r) > huber_scale, huber_scale / abs(r), 1))) as w,
    from huber_scales
),

huber_buckets as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        start,
        huber_scale,
        cast(floor(x / 0.05) as integer) as bucket,
        max(rank) as cut,
        sum(w) as bucket_w,
        sum(w * x) as bucket_x,
        sum(w * y) as bucket_y,
        sum(w * x * x) as bucket_xx,
        sum(w * x * y) as bucket_xy,
        sum(w * y * y) as bucket_yy,
    from huber_points
    group by all
),

huber_running_sums as (
    -- weighted sums over ranks 1..cut (head) and over the whole curve (total)
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        start,
        huber_scale,
        cut,
        max(cut) over curve as n_neurons,
        sum(bucket_w) over running as sum_w,
        sum(bucket_x) over running as sum_x,
        sum(bucket_y) over running as sum_y,
        sum(bucket_xx) over running as sum_xx,
        sum(bucket_xy) over running as sum_xy,
        sum(bucket_w) over curve as total_w,
        sum(bucket_x) over curve as total_x,
        sum(bucket_y) over curve as total_y,
        sum(bucket_xx) over curve as total_xx,
        sum(bucket_xy) over curve as total_xy,
        sum(bucket_yy) over curve as total_yy,
    from huber_buckets
    window
        curve as (partition by run_id, step, layer, token_class, sign),
        running as (
            partition by run_id, step, layer, token_class, sign
            order by bucket
            rows between unbounded preceding and current row
        )
),

huber_cuts as (
    -- `cuts` with weights (the count of ranks after a cut becomes their total weight), for the
    -- cuts within 0.5 of ln rank of either iteration-1 breakpoint
    select
        *,
        ln(cut) as u,
        (total_x - sum_x) - u * (total_w - sum_w) as hinge_h,
        (total_xx - sum_xx) - u * (total_x - sum_x) as hinge_xh,
        (total_xx - sum_xx) - 2 * u * (total_x - sum_x) + u ** 2 * (total_w - sum_w) as hinge_hh,
        (total_xy - sum_xy) - u * (total_y - sum_y) as hinge_yh,
        abs(u - ln(start.b1)) <= 0.5 as near_b1,
        abs(u - ln(start.b2)) <= 0.5 as near_b2,
    from huber_running_sums
    where cut >= 3 and n_neurons - cut >= 3
),

huber_cut_lists as (
    -- per curve, its centred weighted sums and the candidates for each breakpoint as a list (a
    -- self-join would need this step materialized, see `cuts`)
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        any_value(start) as start,
        any_value(huber_scale) as huber_scale,
        any_value(total_w) as total_w,
        any_value(total_x) as total_x,
        any_value(total_y) as total_y,
        any_value(total_xx - total_x ** 2 / total_w) as curve_cxx,
        any_value(total_xy - total_x * total_y / total_w) as curve_cxy,
        any_value(total_yy - total_y ** 2 / total_w) as curve_cyy,
        any_value(1e-10 * (1 + total_yy)) as sse_resolution,
        list({'cut': cut, 'u': u, 'h': hinge_h, 'xh': hinge_xh, 'hh': hinge_hh, 'yh': hinge_yh})
            filter (where near_b1) as first_cuts,
        list({'cut': cut, 'u': u, 'h': hinge_h, 'xh': hinge_xh, 'hh': hinge_hh, 'yh': hinge_yh})
            filter (where near_b2) as second_cuts,
    from huber_cuts
    group by run_id, step, layer, token_class, sign
),

huber_first_cuts as (
    select
        * exclude (first_cuts),
        unnest(first_cuts) as a,
    from huber_cut_lists
),

huber_pairs as (
    select
        * exclude (second_cuts),
        unnest(second_cuts) as b,
    from huber_first_cuts
),

huber_pair_grams as (
    -- pair_grams with weights (a, b: the first and second breakpoint's cut)
    select
        *,
        a.cut as b1,
        b.cut as b2,
        curve_cxx as g11,
        a.xh - total_x * a.h / total_w as g12,
        b.xh - total_x * b.h / total_w as g13,
        a.hh - a.h ** 2 / total_w as g22,
        b.hh + (b.u - a.u) * b.h - a.h * b.h / total_w as g23,
        b.hh - b.h ** 2 / total_w as g33,
        curve_cxy as m1,
        a.yh - a.h * total_y / total_w as m2,
        b.yh - b.h * total_y / total_w as m3,
    from huber_pairs
    where b.u - a.u >= 1 and b.cut - a.cut >= 3
),

huber_pair_adjugates as (
    select
        *,
        g22 * g33 - g23 ** 2 as k11,
        g13 * g23 - g12 * g33 as k12,
        g12 * g23 - g13 * g22 as k13,
        g11 * g33 - g13 ** 2 as k22,
        g12 * g13 - g11 * g23 as k23,
        g11 * g22 - g12 ** 2 as k33,
        g11 * k11 + g12 * k12 + g13 * k13 as det,
    from huber_pair_grams
),

huber_pair_lines as (
    select
        *,
        (k11 * m1 + k12 * m2 + k13 * m3) / det as beta,
        (k12 * m1 + k22 * m2 + k23 * m3) / det as gamma1,
        (k13 * m1 + k23 * m2 + k33 * m3) / det as gamma2,
        curve_cyy - (beta * m1 + gamma1 * m2 + gamma2 * m3) as sse,  -- weighted
    from huber_pair_adjugates
    where det > 0
),

huber_fits as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        any_value(start) as start,
        any_value(huber_scale) as huber_scale,
        arg_min(
            {
                'b1': b1,
                'b2': b2,
                'intercept': (total_y - beta * total_x - gamma1 * a.h - gamma2 * b.h) / total_w,
                'beta': beta,
                'gamma1': gamma1,
                'gamma2': gamma2,
            },
            (greatest(sse, sse_resolution), b1, b2)
        ) as fit,
    from huber_pair_lines
    group by run_id, step, layer, token_class, sign
),

-- ---- the verdict and what it reports ----------------------------------------------------------

three_segments as (
    -- the Huber step's three lines (ln|ΔLoss| = intercept + slope ln(rank)), with the unweighted
    -- sums over the first segment (ranks 1..b1, from cut a) and the power law (b1 + 1..b2, cut b
    -- minus cut a)
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        huber_fits.start as least_squares,
        huber_fits.huber_scale,
        fit.b1,
        fit.b2,
        fit.beta as plateau_slope,
        fit.intercept as plateau_intercept,
        {
            'intercept': fit.intercept - fit.gamma1 * a.u,
            'slope': fit.beta + fit.gamma1,
            'm': b.cut - a.cut,
            'x': b.sum_x - a.sum_x,
            'y': b.sum_y - a.sum_y,
            'xx': b.sum_xx - a.sum_xx,
            'xy': b.sum_xy - a.sum_xy,
            'yy': b.sum_yy - a.sum_yy,
        } as power_law,
        fit.beta + fit.gamma1 + fit.gamma2 as decay_slope,
        fit.intercept - fit.gamma1 * a.u - fit.gamma2 * b.u as decay_intercept,
        -- mean of y minus the power law (intercept α - γ1 ln b1, slope β + γ1) extrapolated over
        -- the first segment's ranks
        (a.sum_y - (fit.intercept - fit.gamma1 * a.u) * a.cut - (fit.beta + fit.gamma1) * a.sum_x) / a.cut
            as plateau_lift,
    from huber_fits
    inner join cuts as a using (run_id, step, layer, token_class, sign)
    inner join cuts as b using (run_id, step, layer, token_class, sign)
    where a.cut = huber_fits.fit.b1 and b.cut = huber_fits.fit.b2
),

compared as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        two_segments.fit.n_neurons as n_neurons,
        two_segments.fit.sse_resolution as sse_resolution,
        three_segments as three,
        two_segments.fit as two,
        -- BIC with k = 6 (intercept, 3 slopes, 2 breakpoints) against 4 (intercept, 2 slopes,
        -- 1 breakpoint), both least squares on the coarse cuts; greatest() skips NULLs, hence the
        -- explicit case for curves without a three-segment fit
        case when three_segments.least_squares is not null then
            n_neurons * ln(greatest(three_segments.least_squares.sse, sse_resolution) / n_neurons)
                + 6 * ln(n_neurons)
        end as three_seg_bic,
        n_neurons * ln(greatest(two_segments.coarse_sse, sse_resolution) / n_neurons) + 4 * ln(n_neurons)
            as two_seg_bic,
    from two_segments
    left join three_segments using (run_id, step, layer, token_class, sign)
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
        -- both fits as fitted, whatever the verdict (three segments after the Huber step)
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
        -- three segments by least squares alone (iteration 1), and the Huber step's threshold k
        three.least_squares.b1 as ls_three_seg_plateau_end_rank,
        three.least_squares.b2 + 1 as ls_three_seg_decay_start_rank,
        three.huber_scale,
    from verdicts
)

select * from final
