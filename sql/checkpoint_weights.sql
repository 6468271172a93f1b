-- grain (run_id, step): each hashed checkpoint, and the earliest other step of its run with the same weights
-- Checkpoint branches are not always what they claim (Pythia's step0 = step1; Pythia-2.8B branches serving
-- final weights): a training-dynamics plot over duplicates shows the same model twice. Hashes: ingest/hashing.py.
with

hashed as (
    select run_id, step, revision, weights_sha256, layer_sha256,
    from checkpoints
    where weights_sha256 is not null
),

same_weights as (
    select
        hashed.run_id,
        hashed.step,
        min(other.step) as duplicate_of,          -- earliest other step whose whole state dict is identical
        count(other.step) as n_same_weights,      -- other steps of the run with identical weights
    from hashed
    left join hashed as other
        on other.run_id = hashed.run_id and other.weights_sha256 = hashed.weights_sha256 and other.step <> hashed.step
    group by hashed.run_id, hashed.step
),

same_layer as (
    select
        hashed.run_id,
        hashed.step,
        min(other.step) as same_layer_as,         -- earliest other step whose studied layer alone is identical
    from hashed
    left join hashed as other
        on other.run_id = hashed.run_id and other.layer_sha256 = hashed.layer_sha256 and other.step <> hashed.step
    group by hashed.run_id, hashed.step
),

final as (
    select
        hashed.run_id,
        hashed.step,
        hashed.revision,
        same_weights.duplicate_of,
        same_weights.n_same_weights,
        same_layer.same_layer_as,
        hashed.weights_sha256,
        hashed.layer_sha256,
    from hashed
    inner join same_weights using (run_id, step)
    inner join same_layer using (run_id, step)
)

select * from final
