-- grain (run_id, token_id): one vocabulary type of a run's corpus with its frequency class
-- A type is rare below the run's percentile of types by count, runs.rare_threshold (default 0.5,
-- the median type; DESIGN "Rare and common tokens"), common otherwise. Ingest classes predictions
-- with this view, so the definition exists once.
-- The papers' band instead (runs.rare_rank_min/max set, --rare-ranks): Zipf ranks before the band
-- are common, ranks in it rare, ranks after it excluded (NULL). runs.exclude_below_elbow (either
-- rule) also excludes types counted less than the elbow of the ln rank - ln count curve: the point
-- farthest from the chord between its first and last types (kneedle), where the long tail starts.
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
        rare_rank_min,
        rare_rank_max,
        coalesce(exclude_below_elbow, false) as exclude_below_elbow,
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

curve as (
    select
        corpus_id,
        count,
        ln(rank) as x,
        ln(count) as y,
    from ranked
    where count > 0
),

chord as (
    select
        corpus_id,
        min(x) as x_first,
        max(x) as x_last,
        max(y) as y_first,                 -- rank 1 holds the largest count
        min(y) as y_last,
    from curve
    group by corpus_id
),

elbows as (
    select
        curve.corpus_id,
        -- count at the point farthest from the chord (its vertical distance; the chord's slope is fixed)
        arg_max(curve.count, abs(curve.y - chord.y_first - (chord.y_last - chord.y_first)
            * (curve.x - chord.x_first) / nullif(chord.x_last - chord.x_first, 0))) as elbow_count,
    from curve
    inner join chord using (corpus_id)
    group by curve.corpus_id
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
        case
            when thresholds.exclude_below_elbow and ranked.count < elbows.elbow_count then null
            when thresholds.rare_rank_min is null
                then case when ranked.percentile < thresholds.rare_threshold then 'rare' else 'common' end
            when ranked.rank < thresholds.rare_rank_min then 'common'
            when ranked.rank <= thresholds.rare_rank_max then 'rare'
        end as token_class,
    from ranked
    inner join thresholds using (corpus_id)
    left join elbows using (corpus_id)
)

select * from final
