-- grain (run_id): one run with its configuration and ingest progress, for the app's Runs page
with

runs_ as (
    select * from runs
),

checkpoint_progress as (
    select
        run_id,
        count(*) as n_checkpoints,
        count(*) filter (where status = 'done') as n_done,
        min(step) as first_step,
        max(step) as last_step,
        max(ingested_at) as last_ingested_at,
    from checkpoints
    group by run_id
),

final as (
    select
        runs_.run_id,
        runs_.model,
        runs_.family,
        runs_.architecture,
        runs_.n_layers,
        runs_.d_model,
        runs_.d_mlp,
        runs_.vocab_size,
        runs_.layer,
        runs_.corpus_id,
        runs_.n_eval_tokens,
        runs_.seq_len,
        runs_.rare_threshold,
        runs_.class_by,
        coalesce(checkpoint_progress.n_checkpoints, 0) as n_checkpoints,
        coalesce(checkpoint_progress.n_done, 0) as n_done,   -- checkpoints with every extractor written
        checkpoint_progress.first_step,
        checkpoint_progress.last_step,
        checkpoint_progress.last_ingested_at,
        runs_.code_version,
        runs_.created_at,
        runs_.config,
    from runs_
    left join checkpoint_progress using (run_id)
)

select * from final
