-- grain (run_id, step, layer, neuron, token_class): exact mean-ablation effect of one neuron
create table if not exists ablation_deltas (
    run_id varchar,
    step bigint,
    layer integer,
    neuron integer,
    token_class varchar,      -- rare, common, all
    delta_loss double,        -- mean over the class's predictions of loss(ablated) - loss(clean)
    std_err double,           -- standard error of that mean
    n integer,                -- predictions averaged
    primary key (run_id, step, layer, neuron, token_class)
);
