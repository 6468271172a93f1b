-- grain (run_id, step, layer, group_name): activation geometry of a neuron group at rare-target samples
-- (analyses/geometry.py); random_* = the same statistic averaged over the random_j controls of the step
create table if not exists analysis_geometry (
    run_id varchar,
    step bigint,
    layer integer,
    group_name varchar,
    n_neurons integer,
    n_samples integer,                  -- rare-target samples the activations cover
    n_pairs integer,                    -- neuron pairs within the group
    mean_cosine double,                 -- mean pairwise cosine of the uncentred activation vectors
    median_cosine double,
    mean_pearson double,                -- mean pairwise Pearson r
    median_pearson double,
    eff_dim_95 integer,                 -- fewest principal components of the z-scored activations reaching 95 % of the variance
    participation_ratio double,         -- (Σλ)² / Σλ² of the same covariance (= correlation) matrix
    mean_cosine_vs_random double,       -- mean cosine between this group's neurons and the random controls' (other groups)
    mean_pearson_vs_random double,      -- same for Pearson r: the papers' plateau–random anti-correlation
    random_mean_cosine double,
    random_median_cosine double,
    random_mean_pearson double,
    random_median_pearson double,
    random_eff_dim_95 double,
    random_participation_ratio double,
    random_mean_cosine_vs_random double,  -- random_i–random_j baseline for mean_cosine_vs_random
    random_mean_pearson_vs_random double,
    primary key (run_id, step, layer, group_name)
);
