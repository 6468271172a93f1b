-- grain (run_id, seq, pos): every evaluated position
create table if not exists eval_tokens (
    run_id varchar,
    seq integer,
    pos integer,
    token_id integer,
    target_class varchar,     -- class of the prediction made here (token at pos + 1); NULL = excluded
    selection varchar,        -- how the sequence was chosen: 'corpus_order' (the first --tokens of the corpus) or
                              -- 'rare_targets' (added for --min-rare: only its rare targets are scored, and the
                              -- ablation's 'all' and 'common' classes count corpus_order sequences only)
    primary key (run_id, seq, pos)
);
