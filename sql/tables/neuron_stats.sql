-- grain (run_id, step, layer, neuron)
create table if not exists neuron_stats (
    run_id varchar,
    step bigint,
    layer integer,
    neuron integer,
    mean_act double,          -- over every eval position (the ablation mean mu)
    mean_act_rare double,     -- over positions whose prediction is rare
    mean_act_common double,
    std_act double,
    frac_active double,       -- fraction of positions with activation > 0
    primary key (run_id, step, layer, neuron)
);
