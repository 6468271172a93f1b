-- grain (run_id, step, layer, token_class, sign, cut): the candidate breakpoints of one sorted
-- influence curve (regime_curves), each with the running sums the fits need in O(1)
-- A cut is the last rank of a bucket 5 % of rank wide (every rank below 20), so candidates are
-- log-spaced and reach the last ranks of the curve (the last bucket's end, n, is no cut: every
-- cut keeps 3 neurons after it, as at least 3 before). At each cut, on x = ln(rank), y = ln|ΔLoss|:
--   sum_*    sums of 1 (= cut), x, y, x², xy, y² over ranks 1..cut (the head before it)
--   total_*  the same sums over the whole curve
--   hinge_*  sums over the ranks after the cut of its hinge h = (x - u)+, u = ln(cut), against 1,
--            x, h, y: a decay that starts after this cut (regime_fits)
with

curves as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        ys,
        n_neurons,
    from regime_curves
),

ranked as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        n_neurons,
        generate_subscripts(ys, 1) as rank,
        ln(rank) as x,
        unnest(ys) as y,
    from curves
),

buckets as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        n_neurons,
        cast(floor(x / 0.05) as integer) as bucket,  -- ranks within 5 % of each other
        max(rank) as cut,
        sum(x) as bucket_x,
        sum(y) as bucket_y,
        sum(x * x) as bucket_xx,
        sum(x * y) as bucket_xy,
        sum(y * y) as bucket_yy,
    from ranked
    group by run_id, step, layer, token_class, sign, n_neurons, bucket
),

running_sums as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        n_neurons,
        cut,
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

final as (
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
        total_xx,
        total_xy,
        total_yy,
        -- over the ranks after the cut (tail sums = total - head)
        (total_x - sum_x) - u * (n_neurons - cut) as hinge_h,
        (total_xx - sum_xx) - u * (total_x - sum_x) as hinge_xh,
        (total_xx - sum_xx) - 2 * u * (total_x - sum_x) + u * u * (n_neurons - cut) as hinge_hh,
        (total_xy - sum_xy) - u * (total_y - sum_y) as hinge_yh,
    from running_sums
    where cut >= 3 and n_neurons - cut >= 3
)

select * from final
