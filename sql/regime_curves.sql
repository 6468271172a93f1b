-- grain (run_id, step, layer, token_class, sign): one sorted influence curve as a list, the first
-- step of the regime fit (regime_curves → regime_cuts → regime_fits → regime_summary; the method is
-- written up once, in regime_summary's header)
with

influence as (
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        log_influence,
    from neuron_influence
),

final as (
    -- ln|ΔLoss| sorted descending: the order of neuron_influence.rank (tied neurons are
    -- interchangeable in every sum downstream); DuckDB sorts lists ~4x faster than it ranks rows
    -- (neuron_influence.rank, left unused here, is not computed)
    select
        run_id,
        step,
        layer,
        token_class,
        sign,
        list_reverse_sort(list(log_influence)) as ys,  -- ln|ΔLoss| by rank, 1 first
        count(*) as n_neurons,
    from influence
    group by run_id, step, layer, token_class, sign
)

select * from final
