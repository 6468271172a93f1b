-- grain (run_id, step, layer, group_name, k, token_class): joint vs additive ablation of a group
-- (analyses/group_ablation.py): is ablating the neurons together worse than the sum of ablating each?
create table if not exists analysis_group_ablation (
    run_id varchar,
    step bigint,
    layer integer,
    group_name varchar,
    k integer,                -- neurons in the group
    token_class varchar,      -- rare, common, all
    joint_delta double,       -- group_ablation_deltas.joint_delta
    additive_delta double,    -- Σ of the members' single-neuron ablation_deltas.delta_loss, same class
    synergy_ratio double,     -- joint_delta / additive_delta: > 1 super-additive; NULL when additive is 0
    primary key (run_id, step, layer, group_name, k, token_class)
);
