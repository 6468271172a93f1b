-- grain (run_id, step, layer, group_name, neuron_a, neuron_b): the full symmetric matrix of
-- Pearson r at rare-target samples between the nodes of a Louvain-partitioned group graph
-- (analysis_communities; group_name also 'plateau+random_j'), both orders and the diagonal,
-- for the app's correlation heatmap
-- r is computed as group_activation_pairs.pearson does (cosine of the centred activations of
-- rare_activations) but only for the nodes of the requested graph: going through
-- modularity_edges would evaluate every group of every step (seconds) to draw one heatmap.
-- order_a / order_b number the nodes by (community, neuron), so blocks show communities.
with

communities as (
    select run_id, step, layer, group_name, neuron, community from analysis_communities
),

activations as (
    select run_id, step, layer, neuron, centred from rare_activations
),

nodes as (
    select
        communities.run_id,
        communities.step,
        communities.layer,
        communities.group_name,
        communities.neuron,
        communities.community,
        activations.centred,
        row_number() over (
            partition by communities.run_id, communities.step, communities.layer, communities.group_name
            order by communities.community, communities.neuron
        ) as node_order,
        -- in a union graph 'plateau+random_j': the group the neuron comes from
        case
            when not starts_with(communities.group_name, 'plateau+') then communities.group_name
            when plateau.neuron is not null then 'plateau'
            else substr(communities.group_name, length('plateau+') + 1)
        end as member_of,
    from communities
    inner join activations
        on communities.run_id = activations.run_id
        and communities.step = activations.step
        and communities.layer = activations.layer
        and communities.neuron = activations.neuron
    left join communities as plateau
        on plateau.group_name = 'plateau'
        and communities.run_id = plateau.run_id
        and communities.step = plateau.step
        and communities.layer = plateau.layer
        and communities.neuron = plateau.neuron
),

pairs as (
    select
        a.run_id,
        a.step,
        a.layer,
        a.group_name,
        a.neuron as neuron_a,
        b.neuron as neuron_b,
        list_cosine_similarity(a.centred, b.centred) as pearson,
        a.community as community_a,
        b.community as community_b,
        a.node_order as order_a,
        b.node_order as order_b,
        a.member_of as member_a,
        b.member_of as member_b,
    from nodes as a
    inner join nodes as b
        on a.run_id = b.run_id
        and a.step = b.step
        and a.layer = b.layer
        and a.group_name = b.group_name
),

final as (
    select
        * replace (case when isnan(pearson) then null else pearson end as pearson),  -- NULL: a constant neuron
    from pairs
)

select * from final
