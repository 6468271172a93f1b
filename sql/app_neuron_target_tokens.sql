-- grain (run_id, step, layer, neuron, token_id): a neuron's mean activation at the sampled
-- positions whose prediction is token_id (the token at pos + 1), for the app's Neuron page —
-- which predicted tokens the neuron fires for. Only predictions that are not excluded
-- (eval_tokens.target_class not NULL) count.
with

samples as (
    select run_id, step, layer, neuron, acts from activation_samples
),

positions as (
    select run_id, sample_idx, seq, pos from activation_sample_positions
),

tokens as (
    select run_id, seq, pos, token_id, target_class from eval_tokens
),

vocabulary as (
    select runs.run_id, token_frequencies.token_id, token_frequencies.token
    from runs
    inner join token_frequencies on runs.corpus_id = token_frequencies.corpus_id
),

sample_targets as (
    -- the predicted token of every sampled position
    select
        positions.run_id,
        positions.sample_idx,
        following.token_id,
        here.target_class,
    from positions
    inner join tokens as here
        on positions.run_id = here.run_id and positions.seq = here.seq and positions.pos = here.pos
    inner join tokens as following
        on positions.run_id = following.run_id and positions.seq = following.seq and positions.pos + 1 = following.pos
    where here.target_class is not null
),

activations as (
    select
        run_id,
        step,
        layer,
        neuron,
        unnest(acts) as act,
        generate_subscripts(acts, 1) - 1 as sample_idx,  -- acts[k + 1] is sample k
    from samples
),

final as (
    select
        activations.run_id,
        activations.step,
        activations.layer,
        activations.neuron,
        sample_targets.token_id,
        any_value(vocabulary.token) as token,
        any_value(sample_targets.target_class) as token_class,  -- rare / common
        count(*) as n,                                           -- sampled predictions of this token
        avg(activations.act) as mean_act,
    from activations
    inner join sample_targets
        on activations.run_id = sample_targets.run_id and activations.sample_idx = sample_targets.sample_idx
    left join vocabulary
        on sample_targets.run_id = vocabulary.run_id and sample_targets.token_id = vocabulary.token_id
    group by all
)

select * from final
