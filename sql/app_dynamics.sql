-- grain (run_id, layer, step, metric, series): one point of a training-dynamics curve of the
-- app's Dynamics page, long format so that runs overlay and every metric plots the same way
--   metric                   series                      from
--   plateau_fraction         rare, common                regime_summary (boost curves)
--   plateau_size             rare, common                regime_summary (boost curves)
--   power_law_slope          rare, common                regime_summary (boost curves)
--   alpha_hill_w_in/_w_out   plateau, random             analysis_group_spectra
--   modularity_q             plateau, null_mean          analysis_modularity
--   participation_ratio      plateau, random             analysis_geometry
--   eff_dim_95               plateau, random             analysis_geometry
with

regimes as (
    select run_id, step, layer, token_class, plateau_fraction, plateau_size, power_law_slope
    from regime_summary
    where sign = 'boost' and token_class in ('rare', 'common')
),

group_spectra as (
    select run_id, step, layer, matrix, alpha_hill, random_alpha_hill
    from analysis_group_spectra
    where group_name = 'plateau'
),

modularity as (
    select run_id, step, layer, q, null_mean
    from analysis_modularity
    where group_name = 'plateau'
),

geometry as (
    select run_id, step, layer, participation_ratio, random_participation_ratio, eff_dim_95, random_eff_dim_95
    from analysis_geometry
    where group_name = 'plateau'
),

points as (
    select run_id, layer, step, 'plateau_fraction' as metric, token_class as series, plateau_fraction as value
    from regimes
    union all
    select run_id, layer, step, 'plateau_size', token_class, plateau_size
    from regimes
    union all
    select run_id, layer, step, 'power_law_slope', token_class, power_law_slope
    from regimes
    union all
    select run_id, layer, step, 'alpha_hill_' || matrix, 'plateau', alpha_hill
    from group_spectra
    union all
    select run_id, layer, step, 'alpha_hill_' || matrix, 'random', random_alpha_hill
    from group_spectra
    union all
    select run_id, layer, step, 'modularity_q', 'plateau', q
    from modularity
    union all
    select run_id, layer, step, 'modularity_q', 'null_mean', null_mean
    from modularity
    union all
    select run_id, layer, step, 'participation_ratio', 'plateau', participation_ratio
    from geometry
    union all
    select run_id, layer, step, 'participation_ratio', 'random', random_participation_ratio
    from geometry
    union all
    select run_id, layer, step, 'eff_dim_95', 'plateau', eff_dim_95
    from geometry
    union all
    select run_id, layer, step, 'eff_dim_95', 'random', random_eff_dim_95
    from geometry
),

final as (
    select
        run_id,
        layer,
        step,
        metric,
        series,
        cast(value as double) as value,
    from points
    where value is not null and isfinite(cast(value as double))
)

select * from final
