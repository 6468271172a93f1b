-- grain (run_id, step, layer, method, token_class): the follow-up paper's comparison of single
-- attention heads with their whole layer — does rare-token loss hang on one head, or on the layer?
-- From head_ablations: the median (and largest) single-head |ΔLoss| against the whole layer's
-- ΔLoss (head = -1), as a fraction of it and as fractions of the clean loss (relative_change).
with

ablations as (
    select
        run_id,
        step,
        layer,
        head,
        method,
        token_class,
        delta_loss,
        relative_change,
        plateau_act_change,
    from head_ablations
),

single_heads as (
    select
        run_id,
        step,
        layer,
        method,
        token_class,
        count(*) as n_heads,
        median(abs(delta_loss)) as median_head_abs_delta,
        max(abs(delta_loss)) as max_head_abs_delta,
        median(abs(relative_change)) as median_head_abs_relative_change,
        median(plateau_act_change) as median_head_plateau_act_change,
    from ablations
    where head >= 0
    group by run_id, step, layer, method, token_class
),

whole_layers as (
    select
        run_id,
        step,
        layer,
        method,
        token_class,
        delta_loss as layer_delta,
        relative_change as layer_relative_change,
        plateau_act_change as layer_plateau_act_change,
    from ablations
    where head = -1
),

final as (
    select
        single_heads.run_id,
        single_heads.step,
        single_heads.layer,
        single_heads.method,
        single_heads.token_class,
        single_heads.n_heads,
        single_heads.median_head_abs_delta,
        single_heads.max_head_abs_delta,
        whole_layers.layer_delta,
        -- the typical (and the strongest) single head as a fraction of the whole layer's effect
        single_heads.median_head_abs_delta / nullif(abs(whole_layers.layer_delta), 0) as median_head_to_layer,
        single_heads.max_head_abs_delta / nullif(abs(whole_layers.layer_delta), 0) as max_head_to_layer,
        -- the same effects as fractions of the clean mean loss of the class
        single_heads.median_head_abs_relative_change,
        whole_layers.layer_relative_change,
        single_heads.median_head_plateau_act_change,
        whole_layers.layer_plateau_act_change,
    from single_heads
    inner join whole_layers
        on single_heads.run_id = whole_layers.run_id
        and single_heads.step = whole_layers.step
        and single_heads.layer = whole_layers.layer
        and single_heads.method = whole_layers.method
        and single_heads.token_class = whole_layers.token_class
)

select * from final
