-- grain (run_id, seq, pos): every evaluated position
create table if not exists eval_tokens (
    run_id varchar,
    seq integer,
    pos integer,
    token_id integer,
    target_class varchar,     -- class of the prediction made here (token at pos + 1); NULL = excluded
    primary key (run_id, seq, pos)
);
