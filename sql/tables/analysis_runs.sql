-- grain (run_id): when the analysis tables of a run were last computed, and over which steps
create table if not exists analysis_runs (
    run_id varchar primary key,
    steps bigint[],           -- the run's done checkpoints the analyses saw
    code_version varchar,
    seconds double,           -- wall time of the analyses
    analyzed_at timestamp
);
