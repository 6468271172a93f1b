-- grain (run_id, step, layer, token_class): the first paper's synergy question per step — is
-- ablating the plateau together worse than the sum of ablating each member (synergy_ratio > 1),
-- and more so than for random groups of the same size? From analysis_group_ablation
-- (rtn analyze); the random side averages the random_j controls of the step.
with

groups as (
    select
        run_id,
        step,
        layer,
        group_name,
        k,
        token_class,
        joint_delta,
        additive_delta,
        synergy_ratio,
    from analysis_group_ablation
),

plateau as (
    select
        run_id,
        step,
        layer,
        token_class,
        k as plateau_k,
        joint_delta as plateau_joint_delta,
        additive_delta as plateau_additive_delta,
        synergy_ratio as plateau_synergy_ratio,
    from groups
    where group_name = 'plateau'
),

randoms as (
    select
        run_id,
        step,
        layer,
        token_class,
        count(*) as n_random,
        avg(k) as random_k,
        avg(joint_delta) as random_joint_delta,
        avg(additive_delta) as random_additive_delta,
        avg(synergy_ratio) as random_synergy_ratio,
        stddev_samp(synergy_ratio) as random_synergy_ratio_std,
    from groups
    where starts_with(group_name, 'random_')
    group by run_id, step, layer, token_class
),

final as (
    select
        coalesce(plateau.run_id, randoms.run_id) as run_id,
        coalesce(plateau.step, randoms.step) as step,
        coalesce(plateau.layer, randoms.layer) as layer,
        coalesce(plateau.token_class, randoms.token_class) as token_class,
        plateau.plateau_k,
        plateau.plateau_joint_delta,
        plateau.plateau_additive_delta,
        plateau.plateau_synergy_ratio,
        randoms.n_random,
        randoms.random_k,
        randoms.random_joint_delta,
        randoms.random_additive_delta,
        randoms.random_synergy_ratio,
        randoms.random_synergy_ratio_std,
        -- > 0: the plateau is more super-additive than random groups of its size
        plateau.plateau_synergy_ratio - randoms.random_synergy_ratio as synergy_ratio_gap,
    from plateau
    full outer join randoms
        on plateau.run_id = randoms.run_id
        and plateau.step = randoms.step
        and plateau.layer = randoms.layer
        and plateau.token_class = randoms.token_class
)

select * from final
