-- grain (run_id, step, layer, matrix, eigen_idx): one eigenvalue of a weight matrix's W^T W with
-- its empirical complementary CDF and the fitted power law, for the app's Spectra page
-- On log-log axes a power-law tail p(λ) ∝ λ^-α is the straight line
--   P(Λ >= λ) = (n_tail / n) · (λ / xmin)^(1 - α)   for λ >= xmin
-- (weight_spectra's continuous MLE fit), so the fit can be judged against every eigenvalue.
with

spectra as (
    select run_id, step, layer, matrix, alpha, xmin, eigenvalues from weight_spectra
),

eigenvalues as (
    select
        run_id,
        step,
        layer,
        matrix,
        alpha,
        xmin,
        len(eigenvalues) as n_evals,
        unnest(eigenvalues) as eigenvalue,
        generate_subscripts(eigenvalues, 1) as eigen_idx,  -- 1-based, ascending eigenvalue
    from spectra
),

with_tail as (
    select
        *,
        count(*) filter (where eigenvalue >= xmin) over matrix_spectrum as n_tail,
    from eigenvalues
    where eigenvalue > 0
    window matrix_spectrum as (partition by run_id, step, layer, matrix)
),

final as (
    select
        run_id,
        step,
        layer,
        matrix,
        eigen_idx,
        eigenvalue,
        -- share of the eigenvalues at least this large (eigenvalues ascend with eigen_idx)
        (n_evals - eigen_idx + 1) / n_evals as ccdf,
        eigenvalue >= xmin as in_tail,
        alpha,
        xmin,
        n_tail,
        case
            when eigenvalue >= xmin then n_tail / n_evals * pow(eigenvalue / xmin, 1 - alpha)
        end as fitted_ccdf,
    from with_tail
)

select * from final
