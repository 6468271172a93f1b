-- grain (corpus_id): a corpus as tokenized by one tokenizer
create table if not exists corpora (
    corpus_id varchar primary key,
    source varchar,
    tokenizer varchar,
    documents bigint,
    tokens bigint,
    content_hash varchar      -- sha256 of the documents' text
);
