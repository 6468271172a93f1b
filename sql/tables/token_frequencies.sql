-- grain (corpus_id, token_id): only types that occur (count > 0)
create table if not exists token_frequencies (
    corpus_id varchar,
    token_id integer,
    token varchar,
    count bigint,
    primary key (corpus_id, token_id)
);
