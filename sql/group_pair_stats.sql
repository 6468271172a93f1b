-- grain (run_id, step, layer, group_a, group_b): mean and median pairwise cosine and Pearson r
-- over the pairs of group_activation_pairs (within a group when group_a = group_b)
with

pairs as (
    select run_id, step, layer, group_a, group_b, cosine, pearson from group_activation_pairs
),

final as (
    select
        run_id,
        step,
        layer,
        group_a,
        group_b,
        count(*) as n_pairs,
        avg(cosine) as mean_cosine,
        median(cosine) as median_cosine,
        avg(pearson) as mean_pearson,
        median(pearson) as median_pearson,
    from pairs
    group by run_id, step, layer, group_a, group_b
)

select * from final
