-- grain (run_id, step)
create table if not exists checkpoints (
    run_id varchar,
    step bigint,
    revision varchar,         -- hub revision or checkpoint folder name
    source varchar,           -- where the weights were loaded from
    tokens_seen bigint,       -- training tokens seen, when known (NULL otherwise)
    ingested_at timestamp,
    status varchar,           -- 'done' once every extractor of the step is written
    stage_seconds json,       -- wall time of each ingest stage
    primary key (run_id, step)
);
