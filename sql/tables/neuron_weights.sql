-- grain (run_id, step, layer, neuron)
create table if not exists neuron_weights (
    run_id varchar,
    step bigint,
    layer integer,
    neuron integer,
    w_in float[],             -- [d_model] row of the up-projection feeding this neuron
    w_out float[],            -- [d_model] column of the down-projection this neuron writes
    primary key (run_id, step, layer, neuron)
);
