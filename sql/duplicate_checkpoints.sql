-- grain (run_id, step): checkpoints whose whole weights, or studied layer, equal another step's of the same run
with

checkpoint_weights_ as (
    select * from checkpoint_weights
),

final as (
    select
        run_id,
        step,
        revision,
        duplicate_of,                                  -- NULL when only the studied layer repeats
        same_layer_as,
        duplicate_of is not null as whole_model_identical,
        weights_sha256,
    from checkpoint_weights_
    where duplicate_of is not null or same_layer_as is not null
)

select * from final
