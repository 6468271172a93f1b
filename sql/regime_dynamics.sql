-- grain (run_id, layer, sign, step): the regime verdict of rare beside common targets at every
-- step, beside the same run's first step (the step-0 baseline), ready to plot or to compare runs
-- The papers' claims are contrasts: sorted influence curves bend even at initialisation, so a
-- plateau means something only against common tokens and against the untrained model.
-- `_step0` columns hold the run's earliest ingested step (`baseline_step`, normally 0).
with

summaries as (
    select * from regime_summary
),

run_models as (
    select
        run_id,
        model,
        family,
    from runs
),

checkpoint_tokens as (
    select
        run_id,
        step,
        tokens_seen,
    from checkpoints
),

side_by_side as (
    select
        run_id,
        layer,
        sign,
        step,
        any_value(plateau_verdict) filter (where token_class = 'rare') as plateau_verdict_rare,
        any_value(plateau_verdict) filter (where token_class = 'common') as plateau_verdict_common,
        bool_or(flattened_head) filter (where token_class = 'rare') as flattened_head_rare,
        bool_or(has_plateau) filter (where token_class = 'rare') as has_plateau_rare,
        bool_or(has_plateau) filter (where token_class = 'common') as has_plateau_common,
        max(plateau_size) filter (where token_class = 'rare') as plateau_size_rare,
        max(plateau_size) filter (where token_class = 'common') as plateau_size_common,
        max(plateau_fraction) filter (where token_class = 'rare') as plateau_fraction_rare,
        max(plateau_fraction) filter (where token_class = 'common') as plateau_fraction_common,
        max(plateau_lift) filter (where token_class = 'rare') as plateau_lift_rare,
        max(plateau_lift) filter (where token_class = 'common') as plateau_lift_common,
        max(power_law_slope) filter (where token_class = 'rare') as power_law_slope_rare,
        max(power_law_slope) filter (where token_class = 'common') as power_law_slope_common,
        max(delta_bic) filter (where token_class = 'rare') as delta_bic_rare,
        max(delta_bic) filter (where token_class = 'common') as delta_bic_common,
        max(paper_plateau_size) filter (where token_class = 'rare') as paper_plateau_size_rare,
        max(paper_plateau_size) filter (where token_class = 'common') as paper_plateau_size_common,
    from summaries
    group by run_id, layer, sign, step
),

contrasts as (
    select
        *,
        -- rare minus common: what rare targets recruit beyond common ones
        plateau_fraction_rare - plateau_fraction_common as plateau_fraction_gap,
        plateau_lift_rare - plateau_lift_common as plateau_lift_gap,
    from side_by_side
),

with_baseline as (
    select
        *,
        first_value(step) over first_step as baseline_step,
        first_value(plateau_verdict_rare) over first_step as plateau_verdict_rare_step0,
        first_value(plateau_verdict_common) over first_step as plateau_verdict_common_step0,
        first_value(plateau_fraction_rare) over first_step as plateau_fraction_rare_step0,
        first_value(plateau_fraction_common) over first_step as plateau_fraction_common_step0,
        first_value(plateau_lift_rare) over first_step as plateau_lift_rare_step0,
        first_value(plateau_lift_common) over first_step as plateau_lift_common_step0,
        first_value(plateau_lift_gap) over first_step as plateau_lift_gap_step0,
        first_value(delta_bic_rare) over first_step as delta_bic_rare_step0,
        -- share of the run's training the step stands for, so runs of any length line up
        step / nullif(max(step) over (partition by run_id), 0) as training_progress,
    from contrasts
    window first_step as (partition by run_id, layer, sign order by step)
),

final as (
    select
        with_baseline.run_id,
        run_models.model,
        run_models.family,
        with_baseline.layer,
        with_baseline.sign,
        with_baseline.step,
        checkpoint_tokens.tokens_seen,
        training_progress,
        baseline_step,
        -- the verdicts side by side: this step's rare and common, and the baseline step's
        plateau_verdict_rare,
        plateau_verdict_common,
        plateau_verdict_rare_step0,
        plateau_verdict_common_step0,
        flattened_head_rare,
        has_plateau_rare,
        has_plateau_common,
        plateau_size_rare,
        plateau_size_common,
        plateau_fraction_rare,
        plateau_fraction_common,
        plateau_fraction_gap,
        plateau_lift_rare,
        plateau_lift_common,
        plateau_lift_gap,
        power_law_slope_rare,
        power_law_slope_common,
        delta_bic_rare,
        delta_bic_common,
        paper_plateau_size_rare,
        paper_plateau_size_common,
        plateau_fraction_rare_step0,
        plateau_fraction_common_step0,
        plateau_lift_rare_step0,
        plateau_lift_common_step0,
        plateau_lift_gap_step0,
        delta_bic_rare_step0,
        -- change since the baseline step
        plateau_fraction_rare - plateau_fraction_rare_step0 as plateau_fraction_rare_vs_step0,
        plateau_lift_rare - plateau_lift_rare_step0 as plateau_lift_rare_vs_step0,
        plateau_lift_gap - plateau_lift_gap_step0 as plateau_lift_gap_vs_step0,
    from with_baseline
    left join run_models using (run_id)
    left join checkpoint_tokens using (run_id, step)
)

select * from final
