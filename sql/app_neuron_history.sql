-- grain (run_id, step, layer, neuron): one neuron at every checkpoint — its mean-ablation ΔLoss
-- on rare / common / all targets, its rank in the rare-target influence curve, and its
-- activation statistics — for the app's Neuron page
with

deltas as (
    select run_id, step, layer, neuron, token_class, delta_loss, std_err from ablation_deltas
),

stats as (
    select run_id, step, layer, neuron, mean_act, mean_act_rare, mean_act_common, std_act, frac_active
    from neuron_stats
),

rare_ranks as (
    select run_id, step, layer, neuron, sign as rare_sign, rank as rare_rank
    from neuron_influence
    where token_class = 'rare'
),

by_class as (
    select
        run_id,
        step,
        layer,
        neuron,
        max(delta_loss) filter (where token_class = 'rare') as delta_loss_rare,
        max(delta_loss) filter (where token_class = 'common') as delta_loss_common,
        max(delta_loss) filter (where token_class = 'all') as delta_loss_all,
        max(std_err) filter (where token_class = 'rare') as std_err_rare,
        max(std_err) filter (where token_class = 'common') as std_err_common,
        max(std_err) filter (where token_class = 'all') as std_err_all,
    from deltas
    group by run_id, step, layer, neuron
),

final as (
    select
        by_class.*,
        rare_ranks.rare_sign,  -- boost or suppress on rare targets (NULL: exactly zero effect)
        rare_ranks.rare_rank,  -- 1 = the most influential neuron of that sign on rare targets
        stats.mean_act,
        stats.mean_act_rare,
        stats.mean_act_common,
        stats.std_act,
        stats.frac_active,
    from by_class
    left join rare_ranks using (run_id, step, layer, neuron)
    left join stats using (run_id, step, layer, neuron)
)

select * from final
