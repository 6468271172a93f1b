-- The regime of a neuron at `rank` on a sorted influence curve under its verdict (regime_summary):
-- plateau / power_law / decay with a plateau, else power_law / decay; NULL for curves too short to
-- fit (no decay point). influence_regimes and app_influence_curves label their points with it.
create or replace macro regime_label(rank, has_plateau, plateau_end_rank, decay_start_rank) as
    case
        when decay_start_rank is null then null
        when has_plateau and rank <= plateau_end_rank then 'plateau'
        when rank < decay_start_rank then 'power_law'
        else 'decay'
    end;
