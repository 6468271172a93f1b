-- Closed-form least squares for the regime views (regime_fits, regime_summary): every fit there is
-- a line, or a line with one hinge, whose normal equations come from running sums of 1, x, y, x²,
-- xy, y² (and of a hinge h = (x - u)+) in O(1). Applied before the views (rtn.sql.apply_views).

-- Σ(a - ā)(b - b̄) over n points, from Σab, Σa, Σb
create or replace macro centred(sum_ab, sum_a, sum_b, n) as sum_ab - sum_a * sum_b / n;

-- y = intercept + slope x by least squares, from n points' centred sums (cxx = Σ(x - x̄)², ...)
-- and plain sums; sse is its squared error
create or replace macro line_fit(n, sum_x, sum_y, cxx, cxy, cyy) as {
    'slope': cxy / cxx,
    'intercept': (sum_y - cxy / cxx * sum_x) / n,
    'sse': cyy - cxy * cxy / cxx,
};

-- y = intercept + slope x + gamma h by least squares, h = (x - u)+, from the centred normal
-- equations [[cxx, cxh], [cxh, chh]] [slope, gamma] = [cxy, cyh] and the plain sums
create or replace macro hinge_fit(n, sum_x, sum_y, sum_h, cxx, cxh, chh, cxy, cyh, cyy) as {
    'slope': (chh * cxy - cxh * cyh) / (cxx * chh - cxh * cxh),
    'gamma': (cxx * cyh - cxh * cxy) / (cxx * chh - cxh * cxh),
    'intercept': (
        sum_y - (chh * cxy - cxh * cyh) / (cxx * chh - cxh * cxh) * sum_x
        - (cxx * cyh - cxh * cxy) / (cxx * chh - cxh * cxh) * sum_h
    ) / n,
    'sse': cyy - ((chh * cxy - cxh * cyh) * cxy + (cxx * cyh - cxh * cxy) * cyh) / (cxx * chh - cxh * cxh),
    'det': cxx * chh - cxh * cxh,
};

-- squared error of the line intercept + slope x over points with sums m (count), x, y, xx, xy, yy
create or replace macro line_sse(intercept, slope, m, sum_x, sum_y, sum_xx, sum_xy, sum_yy) as
    sum_yy - 2 * intercept * sum_y - 2 * slope * sum_xy + intercept * intercept * m
    + 2 * intercept * slope * sum_x + slope * slope * sum_xx;

-- Bayesian information criterion of a least-squares fit with k parameters to n points
create or replace macro bic(sse, n, k) as n * ln(sse / n) + k * ln(n);

-- hinge_fit's squared error alone (cheap: the searches evaluate it for every candidate)
create or replace macro hinge_sse(cxx, cxh, chh, cxy, cyh, cyy) as
    cyy - (chh * cxy * cxy - 2 * cxh * cxy * cyh + cxx * cyh * cyh) / (cxx * chh - cxh * cxh);

-- the key the searches minimise: squared errors below `resolution` count as equal (an exact fit),
-- and among those `tie` (in [0, 1)) orders candidates, smallest breakpoints first; a plain
-- number, so arg_min compares it fast
create or replace macro search_key(sse, resolution, tie) as greatest(sse, resolution) + resolution * tie;

-- hinge_sse on n points from their centred sums (cxx, cxy, cyy), plain sums x, y, and the plain
-- sums of the hinge h (h, xh, hh, yh)
create or replace macro hinge_sse_of_sums(n, sum_x, sum_y, cxx, cxy, cyy, sum_h, sum_xh, sum_hh, sum_yh) as
    hinge_sse(cxx, centred(sum_xh, sum_x, sum_h, n), centred(sum_hh, sum_h, sum_h, n), cxy,
              centred(sum_yh, sum_y, sum_h, n), cyy);
