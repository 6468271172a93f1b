-- grain (run_id, step, layer, neuron): one neuron's activations at the sampled positions whose
-- prediction is rare (eval_tokens.target_class = 'rare'), in sample_idx order; the input of the
-- activation-geometry and modularity views and analyses
with

samples as (
    select run_id, step, layer, neuron, acts from activation_samples
),

positions as (
    select run_id, sample_idx, seq, pos from activation_sample_positions
),

tokens as (
    select run_id, seq, pos, target_class from eval_tokens
),

rare_index as (
    -- 1-based list indices of the rare-target samples of each run (acts[k + 1] is sample k)
    select
        positions.run_id,
        list(positions.sample_idx + 1 order by positions.sample_idx) as rare_index,
    from positions
    inner join tokens
        on positions.run_id = tokens.run_id
        and positions.seq = tokens.seq
        and positions.pos = tokens.pos
    where tokens.target_class = 'rare'
    group by positions.run_id
),

selected as (
    select
        samples.run_id,
        samples.step,
        samples.layer,
        samples.neuron,
        list_select(samples.acts::double[], rare_index.rare_index) as acts,
    from samples
    inner join rare_index on samples.run_id = rare_index.run_id
),

with_mean as (
    select
        *,
        len(acts) as n_samples,
        list_avg(acts) as mean_act,
    from selected
),

final as (
    select
        run_id,
        step,
        layer,
        neuron,
        n_samples,
        mean_act,
        acts,                                                    -- double[n_samples]
        list_transform(acts, lambda a: a - mean_act) as centred, -- acts minus their mean: cosine of these = Pearson r
    from with_mean
)

select * from final
