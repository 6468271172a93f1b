-- grain (run_id, step, layer, neuron); acts[k + 1] is the activation at activation_sample_positions.sample_idx = k
create table if not exists activation_samples (
    run_id varchar,
    step bigint,
    layer integer,
    neuron integer,
    acts float[],
    primary key (run_id, step, layer, neuron)
);
