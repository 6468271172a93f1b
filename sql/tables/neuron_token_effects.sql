-- grain (run_id, step, layer, neuron, direction, rank): the tokens whose logits a neuron moves most
create table if not exists neuron_token_effects (
    run_id varchar,
    step bigint,
    layer integer,
    neuron integer,
    direction varchar,        -- 'boost' (largest logit_effect) or 'suppress' (most negative)
    rank integer,             -- 1 = strongest in that direction
    token_id integer,
    token varchar,            -- the tokenizer's string for token_id (NULL for padded vocabulary entries)
    logit_effect double,      -- row of W_U (gamma * w~_out): logit change per unit of activation, before the norm's 1/s
    primary key (run_id, step, layer, neuron, direction, rank)
);
