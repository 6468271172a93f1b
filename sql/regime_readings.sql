-- grain (run_id, step, layer, token_class, sign): what regime_summary reads off a sorted influence
-- curve directly, beside the fits: how much of it is noise, and the papers' own reading
--   share_within_noise  the share of the curve's neurons whose |ΔLoss| lies within 2 standard
--                       errors of zero (ablation_deltas.std_err; a NULL or zero std_err counts as
--                       measured exactly). Sorting such a curve orders noise, so its shape says
--                       nothing; regime_summary's verdict is then 'insufficient_evidence'.
--   paper_*             the papers' reading (Jing-L97/target_neuron_ablation, appendix_figure):
--                       the power law fitted by least squares on the fixed window 3.5 ≤ ln rank ≤
--                       5.5 (ranks 34..244; at least 10 of them), extrapolated back to rank 1;
--                       paper_plateau_size is the run of top ranks lying above that line by more
--                       than paper_threshold (3 root-mean-square residuals of the window's fit, at
--                       least ln 1.25), looked for up to rank 244 (past the window's start the line
--                       is fitted to the ranks themselves); paper_plateau_lift is the mean of
--                       y - line over the run (NULL without one).
-- Only the top 244 ranks matter here: a top-k aggregate, not a sort of the whole curve.
with

influence as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        log_influence,
        influence,
        std_err,
    from neuron_influence
),

tops as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        max(log_influence, 244) as top_ys,  -- the 244 largest ln|ΔLoss|, rank 1 first
        avg(if(influence <= 2 * std_err, 1.0, 0.0)) as share_within_noise,
    from influence
    group by run_id, step, layer, token_class, sign
),

windows as (
    -- ranks 34..244; there x = ln(rank) = ln(33 + i) for the i-th element of the slice
    select
        *,
        list_slice(top_ys, 34, 244) as window_ys,
        len(window_ys) as window_n,
        list_sum(list_transform(window_ys, lambda y, i: ln(33 + i))) as window_x,
        list_sum(window_ys) as window_y,
        list_sum(list_transform(window_ys, lambda y, i: ln(33 + i) * ln(33 + i))) as window_xx,
        list_sum(list_transform(window_ys, lambda y, i: ln(33 + i) * y)) as window_xy,
        list_sum(list_transform(window_ys, lambda y, i: y * y)) as window_yy,
    from tops
),

lines as (
    select
        * exclude (window_ys),
        case when window_n >= 10 then line_fit(
            window_n, window_x, window_y,
            centred(window_xx, window_x, window_x, window_n),
            centred(window_xy, window_x, window_y, window_n),
            centred(window_yy, window_y, window_y, window_n)
        ) end as paper_line,
    from windows
),

thresholds as (
    -- (its own step: DuckDB would repeat an aliased expression inside the lambdas below per element)
    select
        *,
        paper_line.intercept as paper_intercept,
        paper_line.slope as paper_slope,
        greatest(3 * sqrt(greatest(paper_line.sse, 0) / window_n), ln(1.25)) as paper_threshold,
    from lines
),

runs as (
    select
        *,
        list_transform(top_ys, lambda y, i: y - (paper_intercept + paper_slope * ln(i))) as paper_excess,
        -- ranks 1, 2, ... up to the first not above the line by the threshold
        case when paper_line is not null then coalesce(
            list_position(list_transform(paper_excess, lambda e: e > paper_threshold), false) - 1, len(top_ys)
        ) end as paper_run,
    from thresholds
),

final as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        share_within_noise,
        paper_slope as paper_power_law_slope,
        paper_intercept as paper_power_law_intercept,
        paper_threshold,
        paper_run as paper_plateau_size,  -- NULL: fewer than 10 ranks in the window
        list_avg(list_slice(paper_excess, 1, paper_run)) as paper_plateau_lift,
    from runs
)

select * from final
