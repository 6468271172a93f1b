-- grain (run_id, step, layer, token_class, sign): the robust cross-check of one curve's regime
-- verdict (analyses/regimes.py): regime_summary's head model (a head on its own line, then power
-- law + decay) fitted with a Huber loss, beside the SQL's least-squares values (sql_*)
create table if not exists analysis_regime_fits (
    run_id varchar,
    step bigint,
    layer integer,
    token_class varchar,
    sign varchar,                   -- boost, suppress
    n_neurons integer,
    head_size integer,              -- the robust fit's head P (searched up to n/20)
    decay_start_rank integer,       -- first rank after its decay point
    head_slope double,              -- slopes of ln|ΔLoss| against ln(rank): the head's own line,
    power_law_slope double,         -- the power law after it,
    decay_slope double,             -- and the decay
    plateau_lift double,            -- mean over the head of ln|ΔLoss| minus the extrapolated power law
    huber_scale double,             -- residual size where the Huber loss turns from squared to linear
    has_plateau boolean,            -- robust verdict: plateau_lift > sql_lift_threshold, the SQL's BIC test passed
    sql_has_plateau boolean,        -- regime_summary's columns of the same curve
    sql_plateau_verdict varchar,
    sql_head_size integer,
    sql_plateau_lift double,
    sql_lift_threshold double,
    sql_delta_bic double,
    agrees_with_sql boolean,        -- same verdict, and plateau sizes within 15 % where both find one
    primary key (run_id, step, layer, token_class, sign)
);
