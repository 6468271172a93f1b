-- grain (run_id, sample_idx): which position each element of activation_samples.acts is (0-based)
create table if not exists activation_sample_positions (
    run_id varchar,
    sample_idx integer,
    seq integer,
    pos integer,
    primary key (run_id, sample_idx)
);
