-- grain (run_id, step): each hashed checkpoint, and the earliest other step of its run with the same weights
-- Checkpoint branches are not always what they claim (Pythia's step0 = step1; Pythia-2.8B branches serving
-- final weights): a training-dynamics plot over duplicates shows the same model twice. Hashes: ingest/hashing.py.
with

hashed as (
    select run_id, step, revision, weights_sha256, layer_sha256,
    from checkpoints
    where weights_sha256 is not null
),

sharing as (
    select
        *,
        list(step) over (partition by run_id, weights_sha256) as steps_same_weights,   -- this step among them
        list(step) over (partition by run_id, layer_sha256) as steps_same_layer,
    from hashed
),

final as (
    select
        run_id,
        step,
        revision,
        list_min(list_filter(steps_same_weights, lambda s: s <> step)) as duplicate_of,  -- earliest other step, whole state dict identical
        len(steps_same_weights) - 1 as n_same_weights,                                  -- other steps with identical weights
        list_min(list_filter(steps_same_layer, lambda s: s <> step)) as same_layer_as,   -- earliest other step, studied layer identical
        weights_sha256,
        layer_sha256,
    from sharing
)

select * from final
