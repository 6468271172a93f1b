-- grain (run_id, step, layer, group_name, k, token_class): exact joint mean-ablation effect of a
-- group of neurons of the studied layer (ingest/groups.py, the formula of ablation_deltas with
-- c·w replaced by Σ c(j)·w(j)); groups are neuron_groups (k = group size) and the top-k rare-boost
-- prefixes 'top_boost' (k = 1..10)
create table if not exists group_ablation_deltas (
    run_id varchar,
    step bigint,
    layer integer,
    group_name varchar,       -- plateau, top_boost_k, top_suppress_k, random_j (neuron_groups) or top_boost
    k integer,                -- number of neurons ablated together
    token_class varchar,      -- rare, common, all
    joint_delta double,       -- mean over the class's predictions of loss(all k ablated) - loss(clean)
    std_err double,           -- standard error of that mean
    n integer,                -- predictions averaged
    neurons integer[],        -- the neurons ablated, ascending: exactly the members summed for additive_delta
    primary key (run_id, step, layer, group_name, k, token_class)
);
