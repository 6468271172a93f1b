-- grain (run_id, step, layer, head, method, token_class); head = -1 is the whole attention layer
create table if not exists head_ablations (
    run_id varchar,
    step bigint,
    layer integer,
    head integer,
    method varchar,           -- 'mean' (output replaced by its mean) or 'bos' (attention moved to the first token)
    token_class varchar,
    delta_loss double,
    relative_change double,   -- delta_loss / clean mean loss of the class
    plateau_act_change double,-- mean |change| of plateau-neuron activations
    primary key (run_id, step, layer, head, method, token_class)
);
