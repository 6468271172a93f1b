-- grain (run_id, step, layer, group_name, neuron_a, neuron_b), neuron_a < neuron_b: the weighted
-- edges of each group's activation graph (every pair of its neurons) and of the union graphs
-- 'plateau+random_j' (plateau and random_j neurons together); weight = |Pearson r| at rare-target
-- samples, signed_weight = r. Pairs with an undefined r (a constant neuron) have no edge.
with

pairs as (
    select run_id, step, layer, group_a, group_b, neuron_a, neuron_b, pearson
    from group_activation_pairs
    where pearson is not null
),

groups as (
    select run_id, step, layer, group_name from neuron_groups
),

union_graphs as (
    -- one union graph per random control of a (run, step, layer) that has a plateau
    select distinct
        randoms.run_id,
        randoms.step,
        randoms.layer,
        randoms.group_name as random_group,
        'plateau+' || randoms.group_name as union_name,
    from groups as randoms
    inner join groups as plateau
        on randoms.run_id = plateau.run_id
        and randoms.step = plateau.step
        and randoms.layer = plateau.layer
        and plateau.group_name = 'plateau'
    where starts_with(randoms.group_name, 'random_')
),

within_group as (
    select run_id, step, layer, group_a as group_name, neuron_a, neuron_b, pearson
    from pairs
    where group_a = group_b
),

union_within as (
    -- the plateau's and random_j's own edges, as part of plateau+random_j
    select
        within_group.run_id,
        within_group.step,
        within_group.layer,
        union_graphs.union_name as group_name,
        within_group.neuron_a,
        within_group.neuron_b,
        within_group.pearson,
    from within_group
    inner join union_graphs
        on within_group.run_id = union_graphs.run_id
        and within_group.step = union_graphs.step
        and within_group.layer = union_graphs.layer
        and within_group.group_name in ('plateau', union_graphs.random_group)
),

union_between as (
    select
        run_id,
        step,
        layer,
        'plateau+' || group_b as group_name,
        least(neuron_a, neuron_b) as neuron_a,
        greatest(neuron_a, neuron_b) as neuron_b,
        pearson,
    from pairs
    where group_a = 'plateau' and starts_with(group_b, 'random_')
),

edges as (
    select * from within_group
    union all
    select * from union_within
    union all
    select * from union_between
),

final as (
    select distinct  -- a neuron in both plateau and random_j would bring its edges twice
        run_id,
        step,
        layer,
        group_name,
        neuron_a,
        neuron_b,
        abs(pearson) as weight,
        pearson as signed_weight,
    from edges
)

select * from final
