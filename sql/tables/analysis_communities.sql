-- grain (run_id, step, layer, group_name, neuron): the Louvain community of each node of a group graph,
-- so analysis_modularity.q can be recomputed from modularity_edges
create table if not exists analysis_communities (
    run_id varchar,
    step bigint,
    layer integer,
    group_name varchar,
    neuron integer,
    community integer,        -- 0-based, communities numbered by their smallest neuron
    primary key (run_id, step, layer, group_name, neuron)
);
