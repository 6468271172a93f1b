-- grain (corpus_id, token_id): one vocabulary type of a corpus with its frequency class
-- A type is rare below the 50th percentile of types by count (DESIGN "Rare and common tokens").
-- The per-run threshold is runs.rare_threshold; ingest applies it to `percentile`, so the
-- class here is the one for the default threshold 0.5.
with

frequencies as (
    select
        corpus_id,
        token_id,
        token,
        count,
    from token_frequencies
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
        corpus_id,
        token_id,
        token,
        count,
        rank,
        percentile,
        case when percentile < 0.5 then 'rare' else 'common' end as token_class,
    from ranked
)

select * from final
