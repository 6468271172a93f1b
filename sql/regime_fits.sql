-- grain (run_id, step, layer, token_class, sign): the two models regime_summary compares, each
-- fitted by least squares on x = ln(rank), y = ln|ΔLoss| over the cuts of regime_cuts
--   null  power law + decay: y = α + β x + γ (x - ln d)+ over every rank, a continuous hinge at
--         the decay point d (the last rank of the power law); d searched over every cut
--   head  a head of the top P ranks on its own line y = a + b x, and after it power law + decay
--         as above on ranks P+1..n, free to jump at P: a head steeper than the power law and
--         continuous with it, and a shelf lifted above it with a cliff at P, are both this model.
--         P ≤ n/20: the papers' plateau is ≈1.7 % of the layer (Liu et al. 2025); 1/20 leaves room
--         for three times that while keeping the head a head (allowed half the curve, the "head"
--         would be the power law itself). d ≥ e·P: the power law spans an e-fold of rank (a
--         straight stretch over fewer scales is a bend, not a power law).
-- The head model's search: every P with every d within 0.25 of ln rank of the null's decay point
-- (the decay is where the curve falls fastest, and a head of ≤ n/20 ranks barely moves it; of
-- e·P where that lies further out), then d again over every cut given that P. Every pair of cuts
-- (tried) chose the same pairs on the planted and null curves of tests/unit/test_regimes.py at
-- ~3x the cost of this whole view, over the 1 s target of tests/bench_regimes.py.
-- The two parts of the head model are fitted on disjoint ranks, so their squared errors add.
-- Squared errors below 1e-10 of the curve's variance count as an exact fit: noise-free curves tie,
-- and ties go to the smallest breakpoints. Each model's struct keeps its lines and the sums over
-- its power law's ranks (m, x, y, xx, xy, yy), for regime_summary's R² and noise threshold.
with

cuts as materialized (
    -- read by each search below
    select
        *,
        1e-10 * (1 + centred(total_yy, total_y, total_y, n_neurons)) as sse_resolution,
        -- the tail after a head of `cut` ranks: its count, sums and centred sums
        n_neurons - cut as tail_n,
        total_x - sum_x as tail_x,
        total_y - sum_y as tail_y,
        centred(total_xx - sum_xx, tail_x, tail_x, tail_n) as tail_cxx,
        centred(total_xy - sum_xy, tail_x, tail_y, tail_n) as tail_cxy,
        centred(total_yy - sum_yy, tail_y, tail_y, tail_n) as tail_cyy,
        -- the whole curve's centred sums, with this cut's hinge (the null's normal equations)
        centred(total_xx, total_x, total_x, n_neurons) as curve_cxx,
        centred(total_xy, total_x, total_y, n_neurons) as curve_cxy,
        centred(total_yy, total_y, total_y, n_neurons) as curve_cyy,
        centred(hinge_xh, total_x, hinge_h, n_neurons) as curve_cxh,
        centred(hinge_hh, hinge_h, hinge_h, n_neurons) as curve_chh,
        centred(hinge_yh, total_y, hinge_h, n_neurons) as curve_cyh,
    from regime_cuts
),

null_lines as (
    select
        *,
        hinge_fit(n_neurons, total_x, total_y, hinge_h, curve_cxx, curve_cxh, curve_chh, curve_cxy, curve_cyh,
                  curve_cyy) as fit,
    from cuts
),

null_fits as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        any_value(n_neurons) as n_neurons,
        any_value(sse_resolution) as sse_resolution,
        arg_min(
            {
                'decay_end': cut,  -- d: the power law's last rank
                'sse': fit.sse,
                'power_law': {
                    'intercept': fit.intercept, 'slope': fit.slope,
                    'm': cut, 'x': sum_x, 'y': sum_y, 'xx': sum_xx, 'xy': sum_xy, 'yy': sum_yy,
                },
                'decay_intercept': fit.intercept - fit.gamma * u,
                'decay_slope': fit.slope + fit.gamma,
            },
            search_key(fit.sse, sse_resolution, cut / n_neurons)
        ) as null_fit,
    from null_lines
    where fit.det > 0
    group by run_id, step, layer, token_class, sign
),

heads as (
    -- every candidate head, ranks 1..P, with its own line's squared error
    select
        *,
        cut as head_size,
        centred(sum_yy, sum_y, sum_y, cut) - centred(sum_xy, sum_x, sum_y, cut) ** 2
            / centred(sum_xx, sum_x, sum_x, cut) as head_sse,
    from cuts
    where cut <= n_neurons / 20
),

decays as (
    -- every candidate decay point, with the null's
    select
        cuts.*,
        ln(null_fit.decay_end) as null_u,
    from cuts
    inner join null_fits using (run_id, step, layer, token_class, sign)
),

near_sums as (
    -- every P with the decay points near the null's, and the hinge's centred sums over the tail
    -- (columns of their own: as arguments of hinge_sse each would be spelled out three times)
    select
        heads.run_id, heads.step, heads.layer, heads.token_class, heads.sign,
        heads.head_size,
        heads.head_sse,
        heads.sse_resolution,
        (heads.head_size * heads.n_neurons + decay.cut) / (heads.n_neurons * (heads.n_neurons + 1)) as tie,
        heads.tail_cxx,
        heads.tail_cxy,
        heads.tail_cyy,
        centred(decay.hinge_xh, heads.tail_x, decay.hinge_h, heads.tail_n) as cxh,
        centred(decay.hinge_hh, decay.hinge_h, decay.hinge_h, heads.tail_n) as chh,
        centred(decay.hinge_yh, heads.tail_y, decay.hinge_h, heads.tail_n) as cyh,
    from heads
    inner join decays as decay using (run_id, step, layer, token_class, sign)
    where abs(decay.u - greatest(decay.null_u, heads.u + 1)) <= 0.25
        and decay.u - heads.u >= 1 and decay.cut - heads.cut >= 3
),

near_pairs as (
    -- the head's squared error plus power law + decay's on the ranks after it
    select
        run_id, step, layer, token_class, sign,
        head_size,
        search_key(head_sse + hinge_sse(tail_cxx, cxh, chh, tail_cxy, cyh, tail_cyy), sse_resolution, tie) as key,
    from near_sums
),

head_choices as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        arg_min(head_size, key) as head_size,
    from near_pairs
    where isfinite(key)
    group by run_id, step, layer, token_class, sign
),

decay_choices as (
    -- every d given that P
    select
        heads.run_id,
        heads.step,
        heads.layer,
        heads.token_class,
        heads.sign,
        heads.head_size,
        arg_min(
            decay.cut,
            search_key(
                hinge_sse_of_sums(heads.tail_n, heads.tail_x, heads.tail_y, heads.tail_cxx, heads.tail_cxy,
                                  heads.tail_cyy, decay.hinge_h, decay.hinge_xh, decay.hinge_hh, decay.hinge_yh),
                heads.sse_resolution,
                decay.cut / heads.n_neurons
            )
        ) as decay_end,
    from heads
    inner join head_choices using (run_id, step, layer, token_class, sign, head_size)
    inner join cuts as decay using (run_id, step, layer, token_class, sign)
    where decay.u - heads.u >= 1 and decay.cut - heads.cut >= 3
    group by heads.run_id, heads.step, heads.layer, heads.token_class, heads.sign, heads.head_size
),

chosen as (
    -- the chosen pair's lines: the head's on ranks 1..P, power law + decay's on P+1..n
    select
        run_id, step, layer, token_class, sign,
        head.cut as head_size,
        decay.cut as decay_end,
        decay.u as decay_u,
        head.sum_x as head_x,
        head.sum_y as head_y,
        line_fit(head.cut, head.sum_x, head.sum_y, centred(head.sum_xx, head.sum_x, head.sum_x, head.cut),
                 centred(head.sum_xy, head.sum_x, head.sum_y, head.cut),
                 centred(head.sum_yy, head.sum_y, head.sum_y, head.cut)) as head,
        hinge_fit(
            head.tail_n, head.tail_x, head.tail_y, decay.hinge_h, head.tail_cxx,
            centred(decay.hinge_xh, head.tail_x, decay.hinge_h, head.tail_n),
            centred(decay.hinge_hh, decay.hinge_h, decay.hinge_h, head.tail_n), head.tail_cxy,
            centred(decay.hinge_yh, head.tail_y, decay.hinge_h, head.tail_n), head.tail_cyy
        ) as tail,
        {
            'm': decay.cut - head.cut, 'x': decay.sum_x - head.sum_x, 'y': decay.sum_y - head.sum_y,
            'xx': decay.sum_xx - head.sum_xx, 'xy': decay.sum_xy - head.sum_xy, 'yy': decay.sum_yy - head.sum_yy,
        } as power_law_sums,
    from decay_choices
    inner join cuts as head using (run_id, step, layer, token_class, sign)
    inner join cuts as decay using (run_id, step, layer, token_class, sign)
    where head.cut = decay_choices.head_size and decay.cut = decay_choices.decay_end
),

head_fits as (
    select
        *,
        {
            'head_size': head_size,
            'decay_end': decay_end,
            'sse': head.sse + tail.sse,
            'head_intercept': head.intercept,
            'head_slope': head.slope,
            'head_x': head_x,  -- Σ ln(rank) and Σ y over the head, for the lift
            'head_y': head_y,
            'power_law': struct_insert(power_law_sums, intercept := tail.intercept, slope := tail.slope),
            'decay_intercept': tail.intercept - tail.gamma * decay_u,
            'decay_slope': tail.slope + tail.gamma,
        } as head_fit,
    from chosen
),

final as (
    select
        run_id, step, layer, token_class, sign,
        n_neurons,
        sse_resolution,
        null_fit,
        head_fits.head_fit,  -- NULL: no head fits (fewer than 60 neurons, or no room for an e-fold after it)
    from null_fits
    left join head_fits using (run_id, step, layer, token_class, sign)
)

select * from final
