-- grain (run_id, step, layer, token_class, sign): the regime fit of one sorted influence curve
--
-- On x = ln(rank), y = ln|ΔLoss| (neuron_influence) two piecewise lines are fitted by least
-- squares, each segment its own line, a breakpoint being the last rank before the next segment:
--   two segments   (power law, decay)          breakpoint b
--   three segments (plateau, power law, decay) breakpoints b1 < b2
-- Candidate breakpoints ("cuts") are the last ranks of log-spaced buckets 2 % of rank wide
-- (every rank below 50). Running sums of x, y, x², xy, y² at each cut make any segment's line
-- and squared error O(1). The search, exhaustive at each step:
--   1. b over every cut (two segments);
--   2. a second breakpoint over every cut, below b (then b ends the power law) or above it
--      (then b ends the plateau): the two-segment break is the curve's sharpest bend, which is
--      the decay's start or, for a plateau that bends the curve more, the plateau's end;
--   3. every pair (b1, b2) of cuts within ±22 % of rank (e^0.2) of those two.
-- Every segment keeps at least 3 neurons, and the power law spans at least one e-fold of rank
-- (b2 ≥ e·b1): a straight stretch over fewer scales is a bend, not a power law. Without that,
-- the second breakpoint goes where the curve bends most after the first, the curvature of the
-- decay tail (ln|ΔLoss| of near-zero effects plunges) or the rounded corner sorting leaves before
-- a noisy decay, and the fit calls the whole power law a "plateau": a planted power law + decay
-- with noise 0.05 did so (ΔBIC ≈ 750, slopes -1.0 then -2.4 over ranks 2921..3041).
-- A plateau is supported (has_plateau) only when three segments beat two by
-- BIC = n·ln(SSE/n) + k·ln(n), k = 2 per line + 1 per breakpoint (8 against 5), and the first
-- segment is clearly flatter than the second: |slope 1| < ½·|slope 2|. (|slope 1| < |slope 2|
-- alone passes on any bend of a sorted noisy curve: a planted power law + decay with noise 0.05
-- gives slopes -1.00 then -1.01 before the decay's rounded corner, and ΔBIC ≈ 250, because
-- sorting smooths the noise away and BIC takes the residuals as independent.)
-- Curves with fewer than 6 neurons are left out; with fewer than 9 they get no three-segment fit.
--
-- Only cut_lines is materialized for the steps that share it; two_segments, read twice, is
-- inlined (`not materialized`), because DuckDB pushes a filter on the view (`where run_id = ...`)
-- into one level of shared CTEs, not through a chain of them.
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
        cast(floor(x / 0.02) as integer) as bucket,  -- ranks within 2 % of each other
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

end_sums as (
    -- at every cut c, centred sums of the head (0, c] and of the tail (c, n]
    select
        *,
        n_neurons - cut as tail_m,
        sum_xx - sum_x ** 2 / cut as head_cxx,
        sum_xy - sum_x * sum_y / cut as head_cxy,
        sum_yy - sum_y ** 2 / cut as head_cyy,
        (total_xx - sum_xx) - (total_x - sum_x) ** 2 / tail_m as tail_cxx,
        (total_xy - sum_xy) - (total_x - sum_x) * (total_y - sum_y) / tail_m as tail_cxy,
        (total_yy - sum_yy) - (total_y - sum_y) ** 2 / tail_m as tail_cyy,
    from running_sums
    where cut >= 3 and n_neurons - cut >= 3
),

cut_lines as materialized (
    -- the least-squares lines of each cut's head and tail: slope, squared error, R²
    select
        *,
        head_cxy / head_cxx as head_slope,
        greatest(head_cyy - head_cxy ** 2 / head_cxx, 0) as head_sse,
        1 - greatest(head_cyy - head_cxy ** 2 / head_cxx, 0) / nullif(head_cyy, 0) as head_r2,
        tail_cxy / tail_cxx as tail_slope,
        greatest(tail_cyy - tail_cxy ** 2 / tail_cxx, 0) as tail_sse,
        -- squared errors below the rounding error of the running sums count as an exact fit,
        -- so noise-free curves tie and the tie goes to the smallest breakpoint
        1e-10 * (1 + total_yy) as sse_resolution,
    from end_sums
),

two_segments as not materialized (
    -- step 1 (read twice and computed twice: see the header)
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        arg_min(
            {
                'b': cut,
                'sse': head_sse + tail_sse,
                'power_law_slope': head_slope,
                'power_law_r2': head_r2,
                'decay_slope': tail_slope,
                'head_sse': head_sse,
                'tail_sse': tail_sse,
                'sum_x': sum_x,
                'sum_y': sum_y,
                'sum_xx': sum_xx,
                'sum_xy': sum_xy,
                'sum_yy': sum_yy,
            },
            (greatest(head_sse + tail_sse, sse_resolution), cut)
        ) as fit,
    from cut_lines
    group by run_id, step, layer, token_class, sign
),

second_break_sums as (
    -- step 2's candidates: a second cut c an e-fold or more below b (c ends the plateau, b the
    -- power law) or above it (b ends the plateau, c the power law); the middle stretch runs
    -- between the two, whichever comes first
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        least(c.cut, two.fit.b) as b1,
        greatest(c.cut, two.fit.b) as b2,
        case when c.cut < two.fit.b then c.head_sse + two.fit.tail_sse else two.fit.head_sse + c.tail_sse end
            as end_sse,
        c.sse_resolution,
        abs(two.fit.b - c.cut) as m,
        sign(two.fit.b - c.cut) * (two.fit.sum_x - c.sum_x) as sx,
        sign(two.fit.b - c.cut) * (two.fit.sum_y - c.sum_y) as sy,
        sign(two.fit.b - c.cut) * (two.fit.sum_xx - c.sum_xx) as sxx,
        sign(two.fit.b - c.cut) * (two.fit.sum_xy - c.sum_xy) as sxy,
        sign(two.fit.b - c.cut) * (two.fit.sum_yy - c.sum_yy) as syy,
    from cut_lines as c
    inner join two_segments as two using (run_id, step, layer, token_class, sign)
    where abs(ln(c.cut / two.fit.b)) >= 1 and abs(two.fit.b - c.cut) >= 3
),

second_breaks as (
    -- step 2: the best of those, by total squared error of the three lines
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        arg_min(
            {'b1': b1, 'b2': b2},
            (
                greatest(
                    end_sse + (syy - sy * sy / m) - (sxy - sx * sy / m) ** 2 / (sxx - sx * sx / m),
                    sse_resolution
                ),
                b1,
                b2
            )
        ) as pair,
    from second_break_sums
    group by run_id, step, layer, token_class, sign
),

middle_sums as (
    -- step 3's candidates: each pair of cuts a, b within e^0.2 of step 2's b1, b2, with the head
    -- (0, a] and tail (b, n] from their cuts and the power law (a, b] between
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        a.cut as b1,
        b.cut as b2,
        a.cut as head_m,
        a.sum_x as head_sx,
        a.sum_y as head_sy,
        a.head_slope,
        a.head_sse,
        b.tail_slope,
        b.tail_sse,
        a.sse_resolution,
        b.cut - a.cut as m,
        b.sum_x - a.sum_x as sx,
        b.sum_y - a.sum_y as sy,
        (b.sum_xx - a.sum_xx) - (b.sum_x - a.sum_x) ** 2 / m as cxx,
        (b.sum_xy - a.sum_xy) - (b.sum_x - a.sum_x) * (b.sum_y - a.sum_y) / m as cxy,
        (b.sum_yy - a.sum_yy) - (b.sum_y - a.sum_y) ** 2 / m as cyy,
    from second_breaks
    inner join cut_lines as a using (run_id, step, layer, token_class, sign)
    inner join cut_lines as b using (run_id, step, layer, token_class, sign)
    where abs(ln(a.cut / second_breaks.pair.b1)) <= 0.2
        and abs(ln(b.cut / second_breaks.pair.b2)) <= 0.2
        and b.cut - a.cut >= 3
        and ln(b.cut / a.cut) >= 1
),

middle_lines as (
    select
        *,
        cxy / cxx as slope,
        (sy - cxy / cxx * sx) / m as intercept,
        greatest(cyy - cxy ** 2 / cxx, 0) as sse,
        1 - greatest(cyy - cxy ** 2 / cxx, 0) / nullif(cyy, 0) as r2,
    from middle_sums
),

three_segments as (
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
                'sse': head_sse + sse + tail_sse,
                'plateau_slope': head_slope,
                'power_law_slope': slope,
                'power_law_r2': r2,
                'decay_slope': tail_slope,
                -- mean of y minus the power-law line over the plateau's ranks
                'plateau_lift': (head_sy - intercept * head_m - slope * head_sx) / head_m,
            },
            (greatest(head_sse + sse + tail_sse, sse_resolution), b1, b2)
        ) as fit,
    from middle_lines
    group by run_id, step, layer, token_class, sign
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
    from cut_lines
    group by run_id, step, layer, token_class, sign
),

compared as (
    select
        curves.*,
        three_segments.fit as three,
        two_segments.fit as two,
        -- BIC with k = 3 lines x 2 + 2 breakpoints against 2 lines x 2 + 1 breakpoint
        -- (greatest() skips NULLs, hence the explicit case for curves without a fit)
        case when three_segments.fit is not null then
            n_neurons * ln(greatest(three_segments.fit.sse, sse_resolution) / n_neurons) + 8 * ln(n_neurons)
        end as three_seg_bic,
        case when two_segments.fit is not null then
            n_neurons * ln(greatest(two_segments.fit.sse, sse_resolution) / n_neurons) + 5 * ln(n_neurons)
        end as two_seg_bic,
    from curves
    left join three_segments using (run_id, step, layer, token_class, sign)
    left join two_segments using (run_id, step, layer, token_class, sign)
),

verdicts as (
    select
        *,
        coalesce(
            three_seg_bic < two_seg_bic
                and abs(three.plateau_slope) < 0.5 * abs(three.power_law_slope),
            false
        ) as has_plateau,
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
        case when has_plateau then three.power_law_slope else two.power_law_slope end
            as power_law_slope,
        case when has_plateau then three.power_law_r2 else two.power_law_r2 end as power_law_r2,
        -- the fitted first segment's mean lift above the power law extrapolated to its ranks;
        -- given also where has_plateau is false, so a step-0 baseline has a value to compare with
        three.plateau_lift as plateau_lift,
        has_plateau,
        -- both fits as fitted, whatever the verdict
        three.b1 as three_seg_plateau_end_rank,
        three.b2 + 1 as three_seg_decay_start_rank,
        three.plateau_slope as three_seg_plateau_slope,
        three.power_law_slope as three_seg_power_law_slope,
        three.decay_slope as three_seg_decay_slope,
        three_seg_bic,
        two.b + 1 as two_seg_decay_start_rank,
        two.power_law_slope as two_seg_power_law_slope,
        two.decay_slope as two_seg_decay_slope,
        two_seg_bic,
        two_seg_bic - three_seg_bic as delta_bic,  -- > 0: three segments fit better
    from verdicts
)

select * from final
