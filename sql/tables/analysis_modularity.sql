-- grain (run_id, step, layer, group_name): Louvain modularity of a group's activation graph
-- (modularity_edges; group_name also 'plateau+random_j') and its permutation test against random
-- groups of the same size drawn from every neuron of the layer (analyses/modularity.py)
create table if not exists analysis_modularity (
    run_id varchar,
    step bigint,
    layer integer,
    group_name varchar,
    n_neurons integer,
    q double,                 -- modularity of the Louvain partition, edge weight |r| (networkx, resolution 1)
    signed_q double,          -- the same partition scored with signed weights r (Gómez et al. 2009)
    n_communities integer,
    p_value double,           -- (1 + #(null q >= q)) / (1 + n_null)
    null_mean double,
    null_std double,          -- sample standard deviation of null_q
    n_null integer,
    null_q double[],          -- the null distribution: q of each random group
    louvain_seed integer,
    null_seed bigint,         -- seed the null groups were drawn with
    primary key (run_id, step, layer, group_name)
);
