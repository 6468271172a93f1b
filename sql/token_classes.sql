-- grain (run_id, token_id): one vocabulary type of a run's corpus with its frequency class
-- A type is rare below the run's percentile of types by count, runs.rare_threshold (default 0.5,
-- the median type; DESIGN "Rare and common tokens"), common otherwise. Ingest classes predictions
-- with this view, so the definition exists once.
with

frequencies as (
    select
        corpus_id,
        token_id,
        token,
        count,
    from token_frequencies
),

thresholds as (
    select
        run_id,
        corpus_id,
        rare_threshold,
    from runs
),

ranked as (
    select
        *,
        -- Zipf rank: 1 = most frequent type, ties broken by token_id so ranks are unique
        row_number() over (partition by corpus_id order by count desc, token_id) as rank,
        -- share of types strictly rarer than this one, in [0, 1]: the rarest types are 0
        percent_rank() over (partition by corpus_id order by count) as percentile,
    from frequencies
),

final as (
    select
        thresholds.run_id,
        ranked.corpus_id,
        ranked.token_id,
        ranked.token,
        ranked.count,
        ranked.rank,
        ranked.percentile,
        case when ranked.percentile < thresholds.rare_threshold then 'rare' else 'common' end as token_class,
    from ranked
    inner join thresholds using (corpus_id)
)

select * from final
