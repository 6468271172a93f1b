-- grain (run_id, step, layer, token_class, sign): the robust three-segment fit (continuous
-- piecewise line, Huber loss; analyses/regimes.py) of one sorted influence curve, refined from
-- the SQL fit it cross-checks (regime_summary.three_seg_*), and beside it (grid_*) the same
-- robust fit after an independent grid search that never sees the SQL
create table if not exists analysis_regime_fits (
    run_id varchar,
    step bigint,
    layer integer,
    token_class varchar,
    sign varchar,                   -- boost, suppress
    n_neurons integer,
    plateau_end_rank integer,       -- last rank before the first breakpoint (refined from the SQL's)
    decay_start_rank integer,       -- first rank after the second breakpoint
    plateau_slope double,           -- slopes of ln|ΔLoss| against ln(rank), segment by segment
    power_law_slope double,
    decay_slope double,
    huber_scale double,             -- residual size where the Huber loss turns from squared to linear
    sql_has_plateau boolean,        -- regime_summary.has_plateau: where false, no breakpoint means much
    sql_plateau_end_rank integer,   -- regime_summary.three_seg_plateau_end_rank
    sql_decay_start_rank integer,   -- regime_summary.three_seg_decay_start_rank
    agrees_with_sql boolean,        -- both breakpoints within 10 % (or one) of the SQL ranks
    refined_from_sql boolean,       -- false where the SQL has no three-segment fit: the grid fit's values
    grid_plateau_end_rank integer,  -- the independent grid search's robust fit, same meanings
    grid_decay_start_rank integer,
    grid_plateau_slope double,
    grid_power_law_slope double,
    grid_decay_slope double,
    grid_agrees_with_sql boolean,   -- both grid breakpoints within 10 % (or one) of the SQL ranks
    primary key (run_id, step, layer, token_class, sign)
);
