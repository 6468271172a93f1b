-- grain (run_id, step, layer, matrix); layer = -1 for matrices outside the blocks
create table if not exists weight_spectra (
    run_id varchar,
    step bigint,
    layer integer,
    matrix varchar,           -- the parameter's state-dict name
    role varchar,             -- attention, mlp_in, mlp_out, embedding, unembedding or other (ingest/adapters.py ROLES)
    alpha double,             -- power-law MLE exponent of the eigenvalue tail
    xmin double,              -- tail start chosen by minimum KS distance
    ks_distance double,
    sigma double,             -- (alpha - 1) / sqrt(n_tail)
    n_evals integer,
    alpha_weighted double,    -- alpha * log10(lambda_max)
    stable_rank double,       -- sum(lambda) / lambda_max
    log_norm double,          -- log10 of the squared Frobenius norm
    log_spectral_norm double, -- log10 lambda_max
    mp_softrank double,       -- Marchenko-Pastur bulk edge / lambda_max: near 1 for random-like matrices
    heavy_tail boolean,       -- alpha <= 6 and lambda_max clears the MP bulk edge (mp_softrank < 0.8)
    tail_class varchar,       -- very_heavy, heavy, not_heavy or no_fit
    eigenvalues double[],     -- eigenvalues of W^T W, ascending
    primary key (run_id, step, layer, matrix)
);
