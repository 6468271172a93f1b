-- grain (run_id, step, layer, group_name, matrix): the papers' per-group heavy-tail estimate
-- (analyses/group_spectra.py): rows of the group's weight vectors, each z-scored, C = Z Zᵀ / d,
-- Hill estimator on the top k = max(1, floor(0.1 m)) eigenvalues of C
create table if not exists analysis_group_spectra (
    run_id varchar,
    step bigint,
    layer integer,
    group_name varchar,
    matrix varchar,               -- 'w_in' or 'w_out'
    alpha_hill double,            -- 1 / mean(log(λ_i / λ_{k+1})), i = 1..k; lower = heavier tail
    k integer,
    n_neurons integer,            -- m, rows of the group
    d integer,                    -- length of each weight vector (d_model)
    random_alpha_hill double,     -- mean alpha_hill of the random_j controls of the step and matrix
    random_alpha_hill_std double, -- their sample standard deviation
    eigenvalues double[],         -- eigenvalues of C, descending
    primary key (run_id, step, layer, group_name, matrix)
);
