-- grain (run_id, step, layer, group_name, null_idx): one draw of a group's modularity null
-- distribution (analysis_modularity.null_q, random groups of the same size) beside the group's q,
-- for the app's "Q against its null" histogram
with

modularity as (
    select run_id, step, layer, group_name, q, p_value, null_q from analysis_modularity
),

draws as (
    select
        run_id,
        step,
        layer,
        group_name,
        q,
        p_value,
        unnest(null_q) as null_q,
        generate_subscripts(null_q, 1) as null_idx,  -- 1-based position in analysis_modularity.null_q
    from modularity
),

final as (
    select run_id, step, layer, group_name, null_idx, null_q, q, p_value from draws
)

select * from final
