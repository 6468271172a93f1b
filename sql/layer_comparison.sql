-- grain (run_id, step, layer): the MLP layers of a run side by side at each step — does a rare-token
-- plateau stand above the power law (regime_dynamics, boost curves), how high, and how well the
-- attribution screen ranks the layer's neurons (attribution_agreement; NULL where no exact rows)
with

boost as (
    select
        run_id,
        step,
        layer,
        plateau_verdict_rare,
        plateau_verdict_common,
        has_plateau_rare,
        plateau_size_rare,
        plateau_fraction_rare,
        plateau_lift_rare,
        plateau_lift_gap,
        power_law_slope_rare,
    from regime_dynamics
    where sign = 'boost'
),

agreement as (
    select
        run_id,
        step,
        layer,
        any_value(spearman) filter (where token_class = 'rare') as attribution_spearman_rare,
        any_value(spearman) filter (where token_class = 'all') as attribution_spearman_all,
    from attribution_agreement
    group by run_id, step, layer
),

final as (
    select
        boost.*,
        count(*) over same_step as layers_compared,
        -- 1 = the layer whose rare-target head stands highest above its power law at this step
        row_number() over (partition by run_id, step order by plateau_lift_rare desc nulls last, layer)
            as plateau_lift_rank,
        agreement.attribution_spearman_rare,
        agreement.attribution_spearman_all,
    from boost
    left join agreement using (run_id, step, layer)
    window same_step as (partition by run_id, step)
)

select * from final
