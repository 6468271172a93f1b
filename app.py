"""The rtn explorer: every run and checkpoint of the warehouse, in the browser, read-only.

    rtn app [--warehouse PATH] [--port N] [--host 127.0.0.1] [--query-timeout S] [--max-rows N] [--memory-limit 4GB]
    # or, from the checkout: RTN_WAREHOUSE=PATH streamlit run app.py   (.streamlit/config.toml: 127.0.0.1 only)

Pages (sidebar, or the URL: ?page=Influence): Runs, Influence, Dynamics, Geometry & modularity,
Spectra, Heads, Neuron, SQL. Every chart reads a view of `sql/` (the `app_*` views are the
app's own); the app only filters, reshapes and draws. Its connection reads the warehouse and
nothing else (no file, URL or extension; configuration locked), and the SQL box's queries stop
after $RTN_QUERY_TIMEOUT seconds and $RTN_MAX_ROWS rows; every query holds at most
$RTN_APP_MEMORY_LIMIT (default 4GB) in memory (all three set by `rtn app`).
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import altair as alt
import duckdb
import polars as pl
import streamlit as st

from rtn import formats, warehouse
from rtn.errors import RtnError

st.set_page_config(page_title="rtn explorer", page_icon="📉", layout="wide")

PAGES = ("Runs", "Influence", "Dynamics", "Geometry & modularity", "Spectra", "Heads", "Neuron", "SQL")
REGIME_COLORS = alt.Scale(domain=["plateau", "power_law", "decay"], range=["#d62728", "#1f77b4", "#9a9a9a"])
FIT_COLUMNS = ("n_neurons", "plateau_verdict", "plateau_size", "plateau_fraction", "plateau_lift", "lift_threshold",
               "power_law_slope", "power_law_r2", "delta_bic", "head_size", "flattened_head")
# regime_summary's, repeated on every row of app_influence_curves; the page reads these and the points
CURVE_COLUMNS = ("token_class", "sign", "neuron", "rank", "delta_loss", "influence", "regime", "segment_slope",
                 "fitted_influence", "head_line", "power_law_line") + FIT_COLUMNS
VERDICTS = {"plateau": "plateau: the head stands above the power law",
            "no_plateau": "no plateau", "insufficient_evidence": "insufficient evidence (mostly within 2 SE of zero)"}
QUERY_TIMEOUT_S = float(os.environ.get("RTN_QUERY_TIMEOUT") or 5)   # the SQL box's limits (`rtn app --query-timeout`)
MAX_ROWS = int(os.environ.get("RTN_MAX_ROWS") or 10_000)             # (`rtn app --max-rows`)
MEMORY_LIMIT = os.environ.get("RTN_APP_MEMORY_LIMIT") or "4GB"        # per connection (`rtn app --memory-limit`)
FILL_IT = "Fill it with `rtn demo --warehouse {path}` (offline, a few minutes), or `rtn ingest --model ... --warehouse {path}`."


# -- data: read-only, one short connection per script run ------------------------------------------
# STYLE item 8 caches a read-only connection with st.cache_resource. Not here: an open DuckDB
# connection, even read-only, holds the file lock and would block `rtn ingest` for as long as the
# app runs. A script run opens one read-only connection at its first uncached query (waiting
# briefly while a writer holds the lock) and closes it when the run ends, within a second or two;
# st.cache_data keeps results per warehouse version, so a finished write shows on the next rerun
# and an unchanged warehouse is not read twice.

def warehouse_path() -> Path:
    """Returns the warehouse the app explores: $RTN_WAREHOUSE (set by `rtn app`) or the default."""
    return Path(os.environ.get("RTN_WAREHOUSE") or warehouse.DEFAULT_WAREHOUSE).resolve()


def version(path: Path) -> tuple:
    """Returns (size, mtime) of the warehouse and its write-ahead log: changes whenever a writer commits."""
    files = (path, path.with_name(path.name + ".wal"))
    return tuple((f.stat().st_size, f.stat().st_mtime_ns) if f.exists() else None for f in files)


class RunConnection:
    """The script run's read-only connection to the warehouse and nothing else: opened by the first query
    that misses the cache."""

    def __init__(self, path: Path):
        self.path, self.stack, self.con = path, ExitStack(), None

    def open(self):
        if self.con is None:
            self.con = self.stack.enter_context(warehouse.reading(self.path, files=False, memory_limit=MEMORY_LIMIT))
        return self.con

    def frame(self, query: str, params: list) -> pl.DataFrame:
        return warehouse.frame(self.open(), query, params)

    def close(self) -> None:
        self.stack.close()


CONNECTION = RunConnection(warehouse_path())  # a new one each script run; closed at the end of the layout


@st.cache_data(show_spinner=False, max_entries=1024)
def rows(_con: RunConnection, stamp: tuple, relation: str, where: tuple, columns: str, order: str) -> pl.DataFrame:
    """Returns `relation` filtered by `where` ((column, value or tuple of values), ...) as polars."""
    clauses = [f"{col} in ({', '.join('?' * len(val))})" if isinstance(val, tuple) else f"{col} = ?" for col, val in where]
    params = [v for _, val in where for v in (val if isinstance(val, tuple) else (val,))]
    query = f"select {columns} from {relation}" + (" where " + " and ".join(clauses) if clauses else "")
    return _con.frame(query + (f" order by {order}" if order else ""), params)


def load(relation: str, columns: str = "*", order: str = "", **where) -> pl.DataFrame:
    """Returns rows of a view or table (see `rows`); stops the page with a readable message on failure."""
    try:
        return rows(CONNECTION, (str(CONNECTION.path), version(CONNECTION.path)), relation, tuple(where.items()),
                    columns, order)
    except RtnError as err:   # a writer held the lock past the retry
        st.warning(f"{err}. Reload the page in a moment.")
    except (duckdb.CatalogException, duckdb.BinderException) as err:
        st.warning(f"The warehouse's `{relation}` is missing or out of date ({str(err).splitlines()[0]}): "
                   f"run `rtn analyze --warehouse {CONNECTION.path}` to refresh its views.")
    st.stop()


def run_query(text: str) -> warehouse.QueryResult:
    """Returns the SQL box's result within the app's limits; RtnError for a statement that could write,
    a query past the time limit, or one DuckDB refuses (a file, a URL, a setting)."""
    return warehouse.run_read_only(CONNECTION.open(), text, QUERY_TIMEOUT_S, MAX_ROWS)


def steps_of(run_id: str) -> list[int]:
    """Returns the run's fully ingested steps, ascending."""
    return load("checkpoints", "step", "step", run_id=run_id, status="done")["step"].to_list()


# -- charts ---------------------------------------------------------------------------------------
def influence_chart(curve: pl.DataFrame, title: str) -> alt.LayerChart:
    """Returns the log-log |ΔLoss|-vs-rank curve, coloured by regime, with the verdict's fitted lines,
    and (dashed) the head model's own head line and its power law extrapolated back to rank 1."""
    x = alt.X("rank:Q", scale=alt.Scale(type="log"), title="rank")
    dots = alt.Chart(curve).mark_circle(size=22, opacity=0.7).encode(
        x, alt.Y("influence:Q", scale=alt.Scale(type="log"), title="|ΔLoss|"),
        color=alt.Color("regime:N", scale=REGIME_COLORS),
        tooltip=["neuron", "rank", alt.Tooltip("delta_loss", format=".3g"), "regime"])
    fits = alt.Chart(curve).mark_line(strokeWidth=2.5, color="black").encode(
        x, alt.Y("fitted_influence:Q", scale=alt.Scale(type="log")), detail="regime:N",
        tooltip=["regime", alt.Tooltip("segment_slope", title="slope", format=".2f")])
    head = alt.Chart(curve).mark_line(strokeWidth=2, strokeDash=[4, 3], color="#d62728").encode(
        x, alt.Y("head_line:Q", scale=alt.Scale(type="log")))
    power_law = alt.Chart(curve).mark_line(strokeWidth=2, strokeDash=[4, 3], color="#1f77b4").encode(
        x, alt.Y("power_law_line:Q", scale=alt.Scale(type="log")))
    return (dots + fits + power_law + head).properties(title=title, height=300)


def step_x(steps: pl.Series) -> alt.X:
    """Returns the x encoding of training steps: symlog, as checkpoints are log-spaced from step 0."""
    last = int(steps.max() or 1)
    ticks = [0] + [10 ** k for k in range(len(str(last))) if 10 ** k < last] + [last]
    return alt.X("step:Q", scale=alt.Scale(type="symlog"), axis=alt.Axis(values=ticks))


def step_lines(data: pl.DataFrame, y: str, title: str, color: str = "run_id", dash: str | None = None) -> alt.Chart:
    """Returns a line-and-point chart of `y` over steps (symlog axis), one line per color/dash."""
    encoding = {"x": step_x(data["step"]), "y": alt.Y(f"{y}:Q", title=y),
                "color": alt.Color(f"{color}:N"), "tooltip": ["step", color, alt.Tooltip(y, format=".4g")]}
    if dash:
        encoding.update(strokeDash=alt.StrokeDash(f"{dash}:N"), tooltip=["step", color, dash, alt.Tooltip(y, format=".4g")])
    return alt.Chart(data).mark_line(point=True).encode(**encoding).properties(title=title, height=240)


def show(chart: alt.TopLevelMixin) -> None:
    st.altair_chart(chart, width="stretch")


# -- pages ----------------------------------------------------------------------------------------
def page_runs(runs: pl.DataFrame, selected: list[str]) -> None:
    checkpoints = load("checkpoints", "run_id, step, revision, tokens_seen, status, ingested_at", "run_id, step",
                       run_id=tuple(selected))
    show(alt.Chart(checkpoints).mark_tick(thickness=2, size=18).encode(
        x=step_x(checkpoints["step"]), y=alt.Y("run_id:N"), color=alt.Color("status:N"),
        tooltip=["run_id", "step", "revision", "tokens_seen", "status"]).properties(title="checkpoints ingested"))
    st.dataframe(runs.filter(pl.col("run_id").is_in(selected)).drop("config"), hide_index=True)
    st.dataframe(checkpoints, hide_index=True)
    duplicates = load("duplicate_checkpoints", "run_id, step, revision, duplicate_of, same_layer_as, weights_sha256",
                      "run_id, step", run_id=tuple(selected))
    if duplicates.height:   # published branches are not always what they claim (Pythia's step0 = step1)
        st.warning(f"{duplicates.height} checkpoint(s) hold the same weights as another step of their run "
                   "(duplicate_of: the whole model; same_layer_as: the studied layer): their curves repeat a model.")
        st.dataframe(duplicates, hide_index=True)
    for run in runs.filter(pl.col("run_id").is_in(selected)).iter_rows(named=True):
        with st.expander(f"{run['run_id']}: full ingest configuration"):
            st.json(run["config"])


def page_influence(runs: pl.DataFrame, selected: list[str]) -> None:
    run_id, layer = pick_run(runs, selected)
    layers = load("neuron_stats", "distinct layer", "layer", run_id=run_id)["layer"].to_list()   # --layers: several
    if len(layers) > 1:
        layer = st.selectbox("Layer", layers, index=layers.index(layer) if layer in layers else len(layers) - 1,
                             key="influence_layer")
    steps = steps_of(run_id)
    if not steps:
        return st.info(f"Run {run_id} has no fully ingested checkpoint yet.")
    step = st.select_slider("Step: move it to watch the plateau emerge", steps, value=steps[-1], key="influence_step")
    left, right = st.columns(2)
    classes = left.multiselect("Targets", ["rare", "common", "all"], default=["rare", "common"])
    # boost first: the papers' plateau is a head of neurons whose ablation raises the loss; suppress is a click away
    signs = right.multiselect("Sign", ["boost", "suppress"], default=["boost"], key="influence_signs")
    curves = load("app_influence_curves", ", ".join(CURVE_COLUMNS), "token_class, sign, rank", run_id=run_id,
                  step=step, layer=layer)
    for sign in signs:
        for column, token_class in zip(st.columns(len(classes) or 1), classes):
            curve = curves.filter(pl.col("token_class") == token_class, pl.col("sign") == sign)
            with column:
                show(influence_chart(curve, f"{token_class} targets · {sign}"))
                if curve.height and curve["delta_bic"][0] is not None:
                    fit = curve.row(0, named=True)
                    lift = "" if fit["plateau_lift"] is None else (
                        f"head of {fit['head_size']}: lift {fit['plateau_lift']:+.2f} nats "
                        f"(threshold {fit['lift_threshold']:.2f}) · ")
                    st.caption(f"{VERDICTS[fit['plateau_verdict']]} · {lift}plateau {fit['plateau_size']} neurons "
                               f"({100 * fit['plateau_fraction']:.1f} %) · power-law slope "
                               f"{fit['power_law_slope']:.2f} · ΔBIC {fit['delta_bic']:.1f}"
                               + (" · flattened head" if fit["flattened_head"] else ""))
    fits = curves.select("token_class", "sign", *FIT_COLUMNS).unique(maintain_order=True)
    st.dataframe(fits, hide_index=True)


def page_dynamics(runs: pl.DataFrame, selected: list[str]) -> None:
    points = load("app_dynamics", order="run_id, metric, series, step", run_id=tuple(selected))
    metrics = points["metric"].unique(maintain_order=True).to_list()
    if not metrics:
        return st.info("No regime fits yet: run `rtn analyze`.")
    st.caption("Rare-token boost curves (plateau_*, power_law_slope: rare vs common targets), the plateau group "
               "against random groups of its size (Hill α, effective dimensionality) and against its modularity null. "
               "Line style: run.")
    # one faceted chart rather than one per metric: the browser sets up one view, not eight
    lines = alt.Chart(points).mark_line(point=True).encode(
        x=step_x(points["step"]), y=alt.Y("value:Q", title=None), color="series:N", strokeDash="run_id:N",
        tooltip=["run_id", "metric", "series", "step", alt.Tooltip("value", format=".4g")])
    show(lines.properties(width=360, height=190).facet(facet=alt.Facet("metric:N", title=None), columns=2)
         .resolve_scale(y="independent").properties(title="training dynamics"))
    st.dataframe(load("regime_dynamics", order="run_id, step", run_id=tuple(selected), sign="boost"), hide_index=True)


def page_geometry(runs: pl.DataFrame, selected: list[str]) -> None:
    run_id, layer = pick_run(runs, selected)
    modularity = load("analysis_modularity", "* exclude (null_q)", "step, group_name", run_id=run_id, layer=layer)
    if not modularity.height:
        return st.info(f"No modularity analysis for {run_id}: run `rtn analyze --run {run_id}`.")
    steps = modularity["step"].unique().sort().to_list()
    step = st.select_slider("Step", steps, value=steps[-1], key="geometry_step")
    groups = modularity.filter(pl.col("step") == step)["group_name"].to_list()
    unions = [g for g in groups if g.startswith("plateau+")] or groups
    group = st.selectbox("Graph", unions + [g for g in groups if g not in unions], key="graph")
    matrix = load("app_correlation_matrix", "neuron_a, neuron_b, order_a, order_b, pearson",
                  run_id=run_id, step=step, layer=layer, group_name=group)
    null = load("app_modularity_null", run_id=run_id, step=step, layer=layer, group_name=group)
    heat, hist = st.columns([3, 2])
    with heat:
        # axes are the (community, neuron) order numbers: an ordinal scale sorts them without a sort transform;
        # the lower triangle only, as the matrix is symmetric: half the marks for the browser to draw
        show(alt.Chart(matrix.filter(pl.col("order_a") >= pl.col("order_b"))).mark_rect().encode(
            x=alt.X("order_b:O", axis=alt.Axis(labels=False, ticks=False), title="neuron"),
            y=alt.Y("order_a:O", axis=alt.Axis(labels=False, ticks=False), title="neuron"),
            color=alt.Color("pearson:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True)),
            tooltip=["neuron_a", "neuron_b", alt.Tooltip("pearson", format=".3f")],
        ).properties(title=f"Pearson r at rare targets, {group}, ordered by Louvain community", height=420))
    with hist:
        bars = alt.Chart(null).mark_bar(opacity=0.7).encode(
            x=alt.X("null_q:Q", bin=alt.Bin(maxbins=30), title="modularity Q"), y=alt.Y("count():Q"))
        observed = alt.Chart(null.select("q", "p_value").unique()).mark_rule(color="#d62728", strokeWidth=3).encode(
            x="q:Q", tooltip=[alt.Tooltip("q", format=".4f"), alt.Tooltip("p_value", format=".3g")])
        show((bars + observed).properties(title=f"Q of {group} (red) vs random groups", height=420))
    st.dataframe(modularity.filter(pl.col("step") == step), hide_index=True)
    st.dataframe(load("analysis_geometry", run_id=run_id, step=step, layer=layer), hide_index=True)


def page_spectra(runs: pl.DataFrame, selected: list[str]) -> None:
    run_id, layer = pick_run(runs, selected)
    spectra = load("weight_spectra", "* exclude (eigenvalues)", "matrix, step", run_id=run_id)
    if not spectra.height:
        return st.info(f"No weight spectra for {run_id} (ingested with --no-spectra?).")
    matrices = spectra["matrix"].unique(maintain_order=True).to_list()
    studied = spectra.filter(pl.col("layer") == layer, pl.col("role") == "mlp_out")["matrix"]
    default = studied[0] if studied.len() else matrices[0]   # the studied layer's W_out (role from the adapter)
    matrix = st.selectbox("Matrix", matrices, index=matrices.index(default), key="matrix")
    steps = spectra.filter(pl.col("matrix") == matrix)["step"].to_list()
    chosen = st.multiselect("Steps", steps, default=sorted({steps[0], steps[-1]}), key="spectra_steps")
    ccdf = load("app_spectrum_ccdf", run_id=run_id, matrix=matrix, step=tuple(chosen) or (-1,))
    x = alt.X("eigenvalue:Q", scale=alt.Scale(type="log"), title="eigenvalue λ of WᵀW")
    color = alt.Color("step:N")
    dots = alt.Chart(ccdf).mark_circle(size=18).encode(
        x, alt.Y("ccdf:Q", scale=alt.Scale(type="log"), title="P(Λ ≥ λ)"), color,
        tooltip=["step", alt.Tooltip("eigenvalue", format=".4g"), alt.Tooltip("ccdf", format=".3g"), "in_tail"])
    fit = alt.Chart(ccdf.filter(pl.col("in_tail"))).mark_line(strokeDash=[6, 3], strokeWidth=2).encode(
        x, alt.Y("fitted_ccdf:Q", scale=alt.Scale(type="log")), color)
    xmin = alt.Chart(spectra.filter(pl.col("matrix") == matrix, pl.col("step").is_in(chosen))).mark_rule(
        strokeDash=[2, 2]).encode(x="xmin:Q", color=color, tooltip=["step", "xmin", alt.Tooltip("alpha", format=".2f")])
    show((dots + fit + xmin).properties(title=f"{matrix}: eigenvalue tail, power-law fit (dashed) above xmin", height=380))
    show(step_lines(spectra.filter(pl.col("matrix") == matrix), "alpha", f"{matrix}: power-law α over training"))
    st.dataframe(spectra.filter(pl.col("matrix") == matrix), hide_index=True)


def page_heads(runs: pl.DataFrame, selected: list[str]) -> None:
    run_id, _ = pick_run(runs, selected)
    ablations = load("head_ablations", order="step, layer, head", run_id=run_id)
    if not ablations.height:
        return st.info(f"No head ablations for {run_id} (ingested with --head-layers 0?).")
    steps = ablations["step"].unique().sort().to_list()
    step = st.select_slider("Step", steps, value=steps[-1], key="heads_step")
    method = st.segmented_control("Ablation", ablations["method"].unique().sort().to_list(), default="mean",
                                  key="head_method", help="mean: the head's output replaced by its mean; "
                                  "bos: its attention moved to the first token")
    chosen = ablations.filter(pl.col("method") == method).with_columns(
        target=pl.when(pl.col("head") < 0).then(pl.lit("whole layer")).otherwise(pl.format("head {}", pl.col("head"))))
    effects = load("head_effects", order="step", run_id=run_id, method=method, token_class=("rare", "common"))
    over_steps = effects.unpivot(["layer_delta", "max_head_abs_delta", "median_head_abs_delta"],
                                 index=["step", "layer", "token_class"], variable_name="effect", value_name="delta_loss")
    layers = chosen["layer"].unique().sort().to_list()
    for column, layer in zip(st.columns(len(layers)), layers):
        with column:
            show(alt.Chart(chosen.filter(pl.col("step") == step, pl.col("layer") == layer)).mark_bar().encode(
                x=alt.X("target:N", sort=alt.EncodingSortField("head"), title=None),
                y=alt.Y("delta_loss:Q", title="ΔLoss"), xOffset="token_class:N", color="token_class:N",
                tooltip=["target", "token_class", alt.Tooltip("delta_loss", format=".4g"),
                         alt.Tooltip("relative_change", format=".2%")],
            ).properties(title=f"layer {layer}: single heads vs the whole layer, step {step}", height=260))
            show(step_lines(over_steps.filter(pl.col("layer") == layer), "delta_loss",
                            f"layer {layer}: whole layer vs single heads over training", color="effect",
                            dash="token_class"))
    st.dataframe(effects.filter(pl.col("step") == step), hide_index=True)


def page_neuron(runs: pl.DataFrame, selected: list[str]) -> None:
    run_id, layer = pick_run(runs, selected)
    steps = steps_of(run_id)
    top = load("neuron_influence", "neuron", run_id=run_id, step=steps[-1] if steps else -1, layer=layer,
               token_class="rare", sign="boost", rank=1)
    d_mlp = runs.filter(pl.col("run_id") == run_id)["d_mlp"][0]
    neuron = st.number_input("Neuron (default: the strongest rare-target booster at the last step)", 0, d_mlp - 1,
                             int(top["neuron"][0]) if top.height else 0, key="neuron")
    history = load("app_neuron_history", order="step", run_id=run_id, layer=layer, neuron=neuron)
    deltas = history.unpivot(["delta_loss_rare", "delta_loss_common", "delta_loss_all"], index="step",
                             variable_name="token_class", value_name="delta_loss").with_columns(
        pl.col("token_class").str.strip_prefix("delta_loss_"))
    activations = history.unpivot(["mean_act", "mean_act_rare", "mean_act_common", "frac_active"], index="step",
                                  variable_name="statistic", value_name="activation")
    left, right = st.columns(2)
    with left:
        show(step_lines(deltas, "delta_loss", f"neuron {neuron}: ΔLoss when mean-ablated", color="token_class"))
        show(step_lines(history, "rare_rank", f"neuron {neuron}: rank among rare-target neurons of its sign",
                        color="rare_sign"))
        effects = load("neuron_token_effects", order="logit_effect desc", run_id=run_id, layer=layer, neuron=neuron,
                       step=steps[-1] if steps else -1)
        show(alt.Chart(effects).mark_bar().encode(
            x=alt.X("logit_effect:Q", title="logit change per unit of activation"),
            y=alt.Y("token:N", sort="-x", title=None), color="direction:N",
            tooltip=["token", "token_id", "direction", "rank", alt.Tooltip("logit_effect", format=".3g")],
        ).properties(title=f"neuron {neuron}: tokens it boosts and suppresses most (last step)"))
    with right:
        show(step_lines(activations, "activation", f"neuron {neuron}: activation statistics", color="statistic"))
        tokens = load("app_neuron_target_tokens", order="mean_act desc", run_id=run_id, layer=layer, neuron=neuron,
                      step=steps[-1] if steps else -1)
        show(alt.Chart(tokens.head(20)).mark_bar().encode(
            x=alt.X("mean_act:Q", title="mean activation before predicting it"),
            y=alt.Y("token:N", sort="-x", title=None), color="token_class:N",
            tooltip=["token", "token_id", "token_class", "n", alt.Tooltip("mean_act", format=".3g")],
        ).properties(title=f"neuron {neuron}: predicted tokens it fires most for (last step, sampled positions)"))
    st.dataframe(history, hide_index=True)


def page_sql(runs: pl.DataFrame, selected: list[str]) -> None:
    st.caption(f"Read-only: SELECT, DESCRIBE, SHOW, SUMMARIZE or EXPLAIN against the warehouse's tables and views "
               f"(`show tables` lists them); no files. Queries stop after {QUERY_TIMEOUT_S:g} s and "
               f"{MAX_ROWS:,} rows and hold at most {MEMORY_LIMIT} in memory "
               f"(`rtn app --query-timeout S --max-rows N --memory-limit SIZE`).")
    text = st.text_area("SQL", "select step, token_class, sign, plateau_size, plateau_fraction, power_law_slope, "
                        "has_plateau\nfrom regime_summary\norder by run_id, step, token_class, sign", height=140, key="sql")
    if not text.strip():
        return st.info("Type a query, then press Ctrl+Enter.")
    try:
        result = run_query(text)
    except RtnError as err:
        message = str(err).replace("query refused:", "Refused:")   # one line: refused, failed or stopped
        return st.error(message[0].upper() + message[1:])
    if result.statements > 1:
        st.info(f"{result.statements} statements ran; only the last one's result is shown.")
    if result.truncated:
        st.warning(f"Only the first {MAX_ROWS:,} rows are shown and downloaded: the app's row cap "
                   f"(`rtn app --max-rows`). Aggregate or add a `limit`.")
    st.dataframe(formats.displayable(result.table), hide_index=True)
    st.download_button("Download CSV", formats.to_csv(result.table), file_name="rtn_query.csv", mime="text/csv",
                       on_click="ignore")


def pick_run(runs: pl.DataFrame, selected: list[str]) -> tuple[str, int]:
    """Returns the (run_id, studied layer) picked on the page among the runs selected in the sidebar."""
    run_id = st.selectbox("Run", selected, key="run")
    return run_id, int(runs.filter(pl.col("run_id") == run_id)["layer"][0])


# -- layout ---------------------------------------------------------------------------------------
PAGE_VIEWS = dict(zip(PAGES, (page_runs, page_influence, page_dynamics, page_geometry, page_spectra, page_heads,
                              page_neuron, page_sql)))
page = st.sidebar.radio("Page", PAGES, key="page", bind="query-params")
st.title(page)
if not CONNECTION.path.exists():
    st.info(f"No warehouse at `{CONNECTION.path}` yet. " + FILL_IT.format(path=CONNECTION.path))
    st.stop()
try:
    has_runs = load("information_schema.tables", "table_name", table_name="runs").height > 0
    runs = load("app_runs", order="run_id") if has_runs else pl.DataFrame()
    if not runs.height:
        st.info(f"The warehouse `{CONNECTION.path}` has no runs yet. " + FILL_IT.format(path=CONNECTION.path))
        st.stop()
    selected = st.sidebar.multiselect("Runs to compare", runs["run_id"].to_list(),
                                      default=runs["run_id"].to_list()[:4])
    st.sidebar.caption(f"warehouse `{CONNECTION.path}` · read-only")
    # every page, SQL's too, draws this chart: the browser readies its chart library on the app's first page
    progress = runs.filter(pl.col("run_id").is_in(selected)).select("run_id", "n_done", "n_checkpoints")
    st.sidebar.altair_chart(alt.Chart(progress).mark_bar().encode(
        x=alt.X("n_done:Q", title=None, axis=alt.Axis(tickMinStep=1)), y=alt.Y("run_id:N", title=None),
        tooltip=["run_id", "n_done", "n_checkpoints"]).properties(title="checkpoints done", height=alt.Step(18)),
        width="stretch")
    if not selected and page != "SQL":
        st.info("Pick at least one run in the sidebar.")
        st.stop()
    PAGE_VIEWS[page](runs, selected)
finally:
    CONNECTION.close()
