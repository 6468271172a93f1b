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
    weights_sha256 varchar,   -- sha256 of the whole state dict as loaded (names, dtypes, shapes, bytes; ingest/hashing.py)
    layer_sha256 varchar,     -- sha256 of the studied layer's block alone, independent of its index
    primary key (run_id, step)
);
