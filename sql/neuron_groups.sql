-- grain (run_id, step, layer, group_name, neuron): membership of the neuron groups the analyses
-- compare (DESIGN "Groups")
--   plateau         the rare-target boost curve's elevated head where regime_summary finds a
--                   plateau (has_plateau): its plateau_size top neurons. No rows at a step without
--                   one: no other group stands in for it, so analyses of the plateau are absent there
--   top_boost_k     the k neurons whose ablation raises the loss on all targets most
--   top_suppress_k  the k neurons whose ablation lowers the loss on all targets most
--   random_1..5     controls of k neurons each, drawn from the neurons outside the plateau
-- k = the plateau's size, or 10 where the layer has no rare-target plateau at that step (for
-- top_boost_k, top_suppress_k and the random controls).
-- Top groups rank on token_class 'all' so that they separate rare-token specialists from
-- neurons that matter for every prediction. Random draws order neurons by DuckDB's hash of
-- (run_id, step, layer, neuron, j): the same in every process and re-run (not promised across
-- DuckDB versions); each control is drawn on its own, so two controls may share neurons.
with

influence as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        neuron,
        influence,
    from neuron_influence
),

layer_neurons as (
    select distinct
        run_id,
        step,
        layer,
        neuron,
    from ablation_deltas
),

rare_boost_fits as (
    select
        run_id,
        step,
        layer,
        has_plateau,
        plateau_size,
    from regime_summary
    where token_class = 'rare' and sign = 'boost'
),

group_sizes as (
    select
        layers.run_id,
        layers.step,
        layers.layer,
        coalesce(rare_boost_fits.has_plateau, false) as has_plateau,
        -- the plateau's size, or the default 10 where there is none
        case when rare_boost_fits.has_plateau then rare_boost_fits.plateau_size else 10 end as k,
    from (select distinct run_id, step, layer from layer_neurons) as layers
    left join rare_boost_fits using (run_id, step, layer)
),

leaders as (
    -- the k first neurons of a curve in neuron_influence.rank order (influence descending, then
    -- neuron), by a top-k aggregate instead of ranking whole curves
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        any_value(has_plateau) as has_plateau,
        unnest(arg_min(neuron, (-influence, neuron), k)) as neuron,
    from influence
    inner join group_sizes using (run_id, step, layer)
    where token_class = 'all' or (token_class = 'rare' and sign = 'boost')
    group by run_id, step, layer, token_class, sign, k
),

plateau as (
    select
        run_id,
        step,
        layer,
        'plateau' as group_name,
        neuron,
    from leaders
    where token_class = 'rare' and sign = 'boost' and has_plateau
),

top_k as (
    select
        run_id,
        step,
        layer,
        'top_' || sign || '_k' as group_name,
        neuron,
    from leaders
    where token_class = 'all'
),

outside_plateau as (
    select layer_neurons.*
    from layer_neurons
    anti join plateau using (run_id, step, layer, neuron)
),

random_controls as (
    -- control j: the first k neurons of a shuffle seeded by (run_id, step, layer, j)
    select
        outside_plateau.run_id,
        outside_plateau.step,
        outside_plateau.layer,
        'random_' || controls.j as group_name,
        unnest(
            arg_min(
                outside_plateau.neuron,
                (hash(outside_plateau.run_id, outside_plateau.step, outside_plateau.layer,
                    outside_plateau.neuron, controls.j), outside_plateau.neuron),
                group_sizes.k
            )
        ) as neuron,
    from outside_plateau
    inner join group_sizes using (run_id, step, layer)
    cross join range(1, 6) as controls(j)
    group by outside_plateau.run_id, outside_plateau.step, outside_plateau.layer, controls.j, group_sizes.k
),

final as (
    select * from plateau
    union all
    select * from top_k
    union all
    select * from random_controls
)

select * from final
