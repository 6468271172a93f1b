-- grain (run_id, step, layer, group_name, neuron): the input and output weight vectors of every
-- group member, the input of the per-group weight spectra (analyses/group_spectra.py)
with

groups as (
    select run_id, step, layer, group_name, neuron from neuron_groups
),

weights as (
    select run_id, step, layer, neuron, w_in, w_out from neuron_weights
),

final as (
    select
        groups.run_id,
        groups.step,
        groups.layer,
        groups.group_name,
        groups.neuron,
        weights.w_in,   -- float[d_model]
        weights.w_out,  -- float[d_model]
    from groups
    inner join weights
        on groups.run_id = weights.run_id
        and groups.step = weights.step
        and groups.layer = weights.layer
        and groups.neuron = weights.neuron
)

select * from final
