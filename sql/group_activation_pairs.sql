-- grain (run_id, step, layer, group_a, group_b, neuron_a, neuron_b): cosine and Pearson r of two
-- neurons' activations at rare-target samples (rare_activations). Pairs within a group
-- (group_a = group_b, neuron_a < neuron_b) and between a group and a random control
-- (group_b = 'random_j': plateau–random_j, top_*–random_j, and random_i–random_j with i < j by name);
-- a neuron never pairs with itself. NULL where a neuron is constant (cosine/correlation undefined).
with

groups as (
    select run_id, step, layer, group_name, neuron from neuron_groups
),

activations as (
    select run_id, step, layer, neuron, acts, centred from rare_activations
),

members as (
    select
        groups.run_id,
        groups.step,
        groups.layer,
        groups.group_name,
        groups.neuron,
        starts_with(groups.group_name, 'random_') as is_random,
        activations.acts,
        activations.centred,
    from groups
    inner join activations
        on groups.run_id = activations.run_id
        and groups.step = activations.step
        and groups.layer = activations.layer
        and groups.neuron = activations.neuron
),

pairs as (
    select
        a.run_id,
        a.step,
        a.layer,
        a.group_name as group_a,
        b.group_name as group_b,
        a.neuron as neuron_a,
        b.neuron as neuron_b,
        list_cosine_similarity(a.acts, b.acts) as cosine,
        list_cosine_similarity(a.centred, b.centred) as pearson,
    from members as a
    inner join members as b
        on a.run_id = b.run_id
        and a.step = b.step
        and a.layer = b.layer
        and a.neuron <> b.neuron
    where (a.group_name = b.group_name and a.neuron < b.neuron)
        or (b.is_random and a.group_name <> b.group_name and (not a.is_random or a.group_name < b.group_name))
),

final as (
    select
        run_id,
        step,
        layer,
        group_a,
        group_b,
        case when group_a = group_b then 'within' else 'between' end as pair_kind,
        neuron_a,
        neuron_b,
        case when isnan(cosine) then null else cosine end as cosine,    -- of the uncentred vectors
        case when isnan(pearson) then null else pearson end as pearson, -- cosine of the centred vectors
    from pairs
)

select * from final
