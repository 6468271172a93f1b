-- grain (run_id): one row per ingest run (a model family + corpus + settings)
create table if not exists runs (
    run_id varchar primary key,
    model varchar,            -- hub id or local path as given
    family varchar,           -- adapter name: gpt_neox, gpt2
    architecture varchar,     -- config.architectures[0]
    weights_format varchar,   -- 'gguf' when the weights were dequantized on load from a quantized file; NULL otherwise
    quantization varchar,     -- that file's quantization (llama.cpp file type, e.g. Q4_1): spectra carry its rounding
    n_layers integer,
    d_model integer,
    d_mlp integer,
    vocab_size integer,       -- model's (padded) vocabulary size
    corpus_id varchar,
    n_eval_tokens integer,    -- positions evaluated per checkpoint (sequences x seq_len)
    seq_len integer,
    layer integer,            -- studied MLP layer, 0-based block index
    seed integer,
    rare_threshold double,    -- a type is rare below this percentile of types
    rare_rank_min integer,    -- --rare-ranks MIN:MAX (the papers' band): Zipf ranks MIN..MAX rare, before common,
    rare_rank_max integer,    --   after excluded; NULL = the percentile rule above (token_classes)
    exclude_below_elbow boolean,  -- types counted below the rank-frequency elbow are excluded (token_classes)
    class_by varchar,         -- 'target' (default) or 'input': which token's class a prediction gets
    config json,              -- full IngestConfig
    code_version varchar,
    created_at timestamp
);
