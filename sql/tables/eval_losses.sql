-- grain (run_id, step, token_class): clean (un-ablated) mean loss of each class
create table if not exists eval_losses (
    run_id varchar,
    step bigint,
    token_class varchar,
    mean_loss double,
    n integer,
    primary key (run_id, step, token_class)
);
