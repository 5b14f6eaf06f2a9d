"""Paper-style result tables and a trade-off plot, rebuilt from the cell folders alone.

The pipeline is a chain of pure functions over the records of ``bench.store.load_cells``:

    records --cells_frame--> frame    one row per completed cell: suite, dataset, model, seed,
                                      cell_id and one column per test metric (null -> NaN)
            --aggregate-->   per (dataset, model, metric): mean, std (ddof=1; NaN for n=1) and
                                      n (the seeds with a value)
            --summarize-->   + p_value against a baseline model (``paired_test``) and the
                                      reference columns ref_value, ref_source, delta
            --to_markdown / to_latex / to_csv-->  text

Layout (as the tables of Takida et al. 2022): rows are models, in the order they first appear in
the frame (``order_records``: the suite's grid order, or the model registry's); columns are dataset x metric under a two-level header (dataset, then the metric's label
with its direction, ↓ lower / ↑ higher is better). A cell reads ``mean ± std (n)`` over seeds
(``mean (n)`` for one seed) with the decimals registered for the metric (``MetricInfo.decimals``),
otherwise ``SIGNIFICANT`` significant digits of the mean, the std in the mean's decimals. The best
mean of a column is bold, in the direction registered in ``bench.metrics.METRICS``; means that read
the same are all bold. ``–`` marks a model without a value in that column. The metrics shown default
to the registered table metrics present (``bench.metrics.table_metrics``, in registration order); a
dataset shows only those some of its cells reported (no mse column for a label dataset).

Significance: ``†`` marks a model whose mean differs from the baseline model's at p < 0.05 in a
paired t-test (``scipy.stats.ttest_rel``) over matching seeds, i.e. the seeds of the same dataset
that have a value under both models. Fewer than two pairs, and the baseline's own row, give no
p-value (NaN); identical values give NaN, a constant non-zero difference p = 0.

Reference numbers (``load_reference``; ``resolve_reference`` finds a suite's ``reference:`` file,
by path or by name under ``results/reference/``): a CSV file with the header
``dataset,model,metric,value`` and an optional ``source`` column, one published number per line, e.g.

    dataset,model,metric,value,source
    cifar10,vqvae,mse,0.00525,Takida et al. 2022 Table 3

A cell with a reference value gets a second line ``ref 0.00525 (Δ +0.00012)``, where
Δ = ours − ref (our mean minus the reference value, in the decimals of our mean); the sources are
listed under the table. table.csv carries them as ref_value, ref_source and delta.

Files (``write_tables``): table.md, table.tex (booktabs; needs ``\\usepackage{booktabs}``),
table.csv (``CSV_COLUMNS``) and tradeoff.png (``plot_tradeoff``). Failed, running and incomplete
cells are left out and listed under the tables.
"""
from __future__ import annotations

import csv
import itertools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from bench.atomic import atomic_write
from bench.errors import BenchError, ConfigError
from bench.metrics import METRICS, table_metrics
from bench.registry import unknown_name_message
from bench.store import CELLS, CellRecord, load_cells

INFO_COLUMNS = ["suite", "dataset", "model", "seed", "cell_id"]
KEYS = ["dataset", "model", "metric"]
SIGNIFICANT = 4  # significant digits of the metrics registered without decimals (mse, sse, loss, ...)
ALPHA = 0.05
DEFAULT_BASELINE = "vqvae"
REFERENCE_COLUMNS = ("dataset", "model", "metric", "value")
REFERENCE_EXPECTED = "dataset,model,metric,value[,source]"
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "results" / "reference"  # shipped published numbers
CSV_COLUMNS = [*KEYS, "mean", "std", "n", "baseline", "p_value", "ref_value", "ref_source", "delta"]


# ---- records -> frame -------------------------------------------------------------------------

def _usable(record: CellRecord) -> bool:
    return record.status.get("status") == "completed" and record.metrics is not None


def _cell_row(record: CellRecord) -> dict:
    info = record.info
    row = {"suite": info.get("suite"), "dataset": info["dataset"], "model": info["model"],
           "seed": info["seed"], "cell_id": record.cell_id}
    for name, value in record.metrics.get("test", {}).items():
        row[name] = math.nan if value is None else float(value)
    return row


def cells_frame(records: Iterable[CellRecord]) -> pd.DataFrame:
    """One row per completed cell: ``INFO_COLUMNS`` then one float column per test metric.

    A metric a cell did not report (or reported as null) is NaN. Rows keep the order of ``records``.
    """
    rows = [_cell_row(record) for record in records if _usable(record)]
    metrics = list(dict.fromkeys(name for row in rows for name in row if name not in INFO_COLUMNS))
    frame = pd.DataFrame(rows, columns=INFO_COLUMNS + metrics)
    return frame.astype({name: float for name in metrics})


def exclusion_notes(records: Iterable[CellRecord]) -> list[str]:
    """Lines such as "2 failed cells excluded: <ids>", one per status of the cells left out.

    A cell marked completed without a metrics.json counts as "incomplete".
    """
    left_out: dict[str, list[str]] = {}
    for record in records:
        if not _usable(record):
            status = record.status.get("status", "pending")
            left_out.setdefault("incomplete" if status == "completed" else status, []).append(record.cell_id)
    return [f"{len(ids)} {status} cell{'' if len(ids) == 1 else 's'} excluded: {', '.join(ids)}"
            for status, ids in left_out.items()]


# ---- statistics -------------------------------------------------------------------------------

def _metric_columns(frame: pd.DataFrame) -> list[str]:
    return [name for name in frame.columns if name not in INFO_COLUMNS]


def _with_metrics(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """``frame`` with a NaN column for each metric no cell reported."""
    return frame.reindex(columns=list(dict.fromkeys([*frame.columns, *metrics])))


def _require_one_cell_per_seed(frame: pd.DataFrame) -> None:
    repeated = frame[frame.duplicated(["dataset", "model", "seed"], keep=False)]
    if len(repeated):
        raise ConfigError(f"cells repeat a (dataset, model, seed): {', '.join(repeated['cell_id'])}; a table "
                          "needs one cell per seed (write different suites to different output folders)")


def _sort_like(table: pd.DataFrame, orders: dict[str, list]) -> pd.DataFrame:
    """Sort ``table`` by the given columns, each in the order of its list (a stable sort)."""
    def rank(column: pd.Series) -> pd.Series:
        return column.map({value: i for i, value in enumerate(orders[column.name])})

    return table.sort_values(list(orders), key=rank, kind="stable", ignore_index=True)


def aggregate(frame: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, std and n over seeds, per (dataset, model, metric).

    Args:
        frame: from ``cells_frame``.
        metrics: the metrics to aggregate (default: every metric column); one no cell reported
            gets n = 0 and NaN statistics.
    Returns:
        Columns dataset, model, metric, mean, std (ddof=1; NaN for n=1), n (seeds with a value);
        datasets and models in the order they first appear in ``frame``, metrics in the given order.
    Raises:
        ConfigError: two cells share a dataset, model and seed.
    """
    metrics = _metric_columns(frame) if metrics is None else list(metrics)
    _require_one_cell_per_seed(frame)
    long = _with_metrics(frame, metrics).melt(id_vars=["dataset", "model"], value_vars=metrics, var_name="metric")
    table = long.groupby(KEYS, sort=False)["value"].agg(mean="mean", std="std", n="count").reset_index()
    orders = {"dataset": list(pd.unique(frame["dataset"])), "model": list(pd.unique(frame["model"])),
              "metric": metrics}
    return _sort_like(table, orders)


def _paired_p(values: pd.DataFrame, model: str, baseline: str) -> float:
    """p-value of a paired t-test over the rows (seeds) where both columns have a value."""
    if model == baseline or baseline not in values:
        return math.nan
    pairs = values[[model, baseline]].dropna()
    if len(pairs) < 2:
        return math.nan
    with warnings.catch_warnings():  # scipy warns on identical pairs, then returns NaN or p = 0
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_rel(pairs[model], pairs[baseline]).pvalue)


def paired_test(frame: pd.DataFrame, baseline: str, metric: str) -> pd.Series:
    """Paired t-test (``scipy.stats.ttest_rel``) of each model against ``baseline`` on ``metric``.

    Pairs are the seeds of one dataset with a value under both models.
    Returns:
        p-values indexed by (dataset, model); NaN for the baseline itself, for fewer than two pairs
        and where the dataset has no baseline cell.
    Raises:
        ConfigError: ``baseline`` is no model of ``frame``; two cells share a dataset, model and seed.
    """
    models = list(pd.unique(frame["model"]))
    if baseline not in models:
        raise ConfigError(unknown_name_message("baseline model", baseline, models))
    _require_one_cell_per_seed(frame)
    frame = _with_metrics(frame, [metric])
    p_values = {}
    for dataset, rows in frame.groupby("dataset", sort=False):
        values = rows.pivot(index="seed", columns="model", values=metric)
        p_values.update({(dataset, model): _paired_p(values, model, baseline) for model in pd.unique(rows["model"])})
    return pd.Series(p_values, name="p_value", dtype=float).rename_axis(["dataset", "model"])


# ---- summary: statistics + p-values + reference -----------------------------------------------

def _default_metrics(frame: pd.DataFrame) -> list[str]:
    return [name for name in table_metrics() if name in frame and frame[name].notna().any()]


def _drop_empty_columns(summary: pd.DataFrame) -> pd.DataFrame:
    """Drop the (dataset, metric) pairs without any value, e.g. mse on a label dataset."""
    has_values = summary.groupby(["dataset", "metric"], sort=False)["n"].transform("sum") > 0
    return summary[has_values].reset_index(drop=True)


def _add_p_values(summary: pd.DataFrame, frame: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    tests = {} if baseline is None else {m: paired_test(frame, baseline, m) for m in pd.unique(summary["metric"])}
    p_values = [tests[metric].get((dataset, model), math.nan) if tests else math.nan
                for dataset, model, metric in zip(summary["dataset"], summary["model"], summary["metric"])]
    return summary.assign(baseline=baseline, p_value=p_values)


def _reference_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[*REFERENCE_COLUMNS, "source"]).astype({"value": float})


def _add_reference(summary: pd.DataFrame, reference: pd.DataFrame | None) -> pd.DataFrame:
    reference = _reference_frame([]) if reference is None else reference
    reference = reference.rename(columns={"value": "ref_value", "source": "ref_source"})
    merged = summary.merge(reference, on=KEYS, how="left")
    return merged.assign(delta=merged["mean"] - merged["ref_value"])


def summarize(frame: pd.DataFrame, metrics: Sequence[str] | None = None, *, baseline: str | None = None,
              reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """The numeric table behind every writer: one row per (dataset, model, metric).

    Args:
        frame: from ``cells_frame``.
        metrics: registered metric names (default: the registered table metrics present). A dataset
            shows only the metrics some of its cells reported (no mse column for label maps).
        baseline: the model the others are tested against (``paired_test``); None: no test.
        reference: from ``load_reference``.
    Returns:
        ``CSV_COLUMNS``, ordered as ``aggregate``.
    Raises:
        ConfigError: an unknown metric or baseline; two cells share a dataset, model and seed.
    """
    chosen = _default_metrics(frame) if metrics is None else list(metrics)
    for name in chosen:
        METRICS.get(name)  # an unknown name fails here, with the valid names
    summary = _drop_empty_columns(aggregate(frame, chosen))
    summary = _add_p_values(summary, frame, baseline)
    return _add_reference(summary, reference)[CSV_COLUMNS]


# ---- reference numbers ------------------------------------------------------------------------

def _reference_error(path: Path, line: int, problem: str) -> ConfigError:
    return ConfigError(f"{path}: line {line}: {problem}; expected CSV columns {REFERENCE_EXPECTED}")


def _check_reference_header(path: Path, header: list[str] | None) -> None:
    header = header or []
    missing = [name for name in REFERENCE_COLUMNS if name not in header]
    unknown = [name for name in header if name not in (*REFERENCE_COLUMNS, "source")]
    if missing or unknown:
        problems = [f"{label} column(s) {', '.join(map(repr, names))}"
                    for label, names in (("missing", missing), ("unknown", unknown)) if names]
        raise _reference_error(path, 1, "; ".join(problems))


def _reference_row(path: Path, line: int, row: dict) -> dict:
    if None in row:
        raise _reference_error(path, line, "more fields than columns")
    for name in REFERENCE_COLUMNS:
        if not (row.get(name) or "").strip():
            raise _reference_error(path, line, f"empty '{name}'")
    try:
        METRICS.get(row["metric"].strip())
    except ConfigError as error:
        raise _reference_error(path, line, str(error)) from None
    try:
        value = float(row["value"])
    except ValueError:
        raise _reference_error(path, line, f"value {row['value']!r} is not a number") from None
    if not math.isfinite(value):
        raise _reference_error(path, line, f"value {row['value']!r} is not finite")
    return {**{name: row[name].strip() for name in KEYS}, "value": value, "source": (row.get("source") or "").strip()}


def _check_reference_unique(path: Path, rows: list[dict], lines: list[int]) -> None:
    seen: dict[tuple, int] = {}
    for row, line in zip(rows, lines):
        key = tuple(row[name] for name in KEYS)
        if key in seen:
            raise _reference_error(path, line, f"repeats the dataset, model and metric of line {seen[key]}")
        seen[key] = line


def shipped_references() -> list[str]:
    """The names of the reference files shipped in ``results/reference/`` (without .csv)."""
    return sorted(p.stem for p in REFERENCE_DIR.glob("*.csv"))


def resolve_reference(name_or_path: str, base: Path) -> Path:
    """The reference file a suite names: a path relative to the folder ``base`` (or absolute), else
    a file or name (with or without .csv) under ``results/reference/``.

    Raises:
        ConfigError: none of these is a file; the message lists what was looked for and the shipped names.
    """
    candidates = [base / name_or_path, REFERENCE_DIR / name_or_path, REFERENCE_DIR / f"{name_or_path}.csv"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"reference file {name_or_path!r} not found (looked for {', '.join(map(str, candidates))}); "
                      f"shipped: {', '.join(shipped_references()) or 'none'}")


def load_reference(path: str | Path) -> pd.DataFrame:
    """Read published numbers to compare with (format: module docstring).

    Returns:
        Columns dataset, model, metric, value (float), source ("" where not given).
    Raises:
        ConfigError: the file cannot be read, a column is missing or unknown, a field is empty, a
            metric is unknown, a value is not a finite number, or a line repeats another's keys;
            the message names the file, the line and the expected columns.
    """
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            _check_reference_header(path, reader.fieldnames)
            rows, lines = [], []
            for row in reader:
                rows.append(_reference_row(path, reader.line_num, row))
                lines.append(reader.line_num)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the reference file ({error.strerror}); "
                          f"expected CSV columns {REFERENCE_EXPECTED}") from None
    _check_reference_unique(path, rows, lines)
    return _reference_frame(rows)


# ---- cells: numbers -> text -------------------------------------------------------------------

def _decimals(metric: str, value: float) -> int:
    """Decimals to print ``value`` with: the metric's registered decimals, else ``SIGNIFICANT`` significant digits."""
    decimals = METRICS.get(metric).decimals
    if decimals is not None:
        return decimals
    if not math.isfinite(value) or value == 0:
        return SIGNIFICANT - 1
    return max(0, SIGNIFICANT - 1 - math.floor(math.log10(abs(value))))


def _display(metric: str, value: float) -> str:
    return f"{value:.{_decimals(metric, value)}f}"


@dataclass(frozen=True)
class _Cell:
    """One table cell as strings, independent of the output syntax."""

    mean: str | None = None  # None: no value
    std: str | None = None  # None: a single seed
    n: int = 0
    bold: bool = False
    dagger: bool = False
    ref: str | None = None
    delta: str | None = None  # signed, e.g. "+0.0012"


def _cell(row, metric: str, best: str | None) -> _Cell:
    """The cell of one summary row (a namedtuple); ``best`` is the column's best mean as displayed."""
    places = _decimals(metric, row.mean)
    mean = None if row.n == 0 else f"{row.mean:.{places}f}"
    return _Cell(
        mean=mean,
        std=None if math.isnan(row.std) else f"{row.std:.{places}f}",
        n=int(row.n),
        bold=mean is not None and mean == best,
        dagger=bool(row.p_value < ALPHA),
        ref=None if math.isnan(row.ref_value) else _display(metric, row.ref_value),
        delta=None if math.isnan(row.delta) else f"{row.delta:+.{places}f}",
    )


def _column_cells(rows: pd.DataFrame, metric: str) -> dict[str, _Cell]:
    """Cells of one (dataset, metric) column by model; the best mean (as displayed) is bold."""
    means = rows["mean"].dropna()
    best = None
    if len(means):
        best = _display(metric, means.max() if METRICS.get(metric).higher_is_better else means.min())
    return {row.model: _cell(row, metric, best) for row in rows.itertuples(index=False)}


def _grid(summary: pd.DataFrame) -> tuple[list[tuple[str, str]], list[str], dict[tuple, _Cell]]:
    """Columns (dataset, metric), row models and the cells keyed by (model, dataset, metric)."""
    columns = list(dict.fromkeys(zip(summary["dataset"], summary["metric"])))
    models = list(pd.unique(summary["model"]))
    cells = {}
    for (dataset, metric), rows in summary.groupby(["dataset", "metric"], sort=False):
        cells.update({(model, dataset, metric): cell for model, cell in _column_cells(rows, metric).items()})
    return columns, models, cells


# ---- writers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Syntax:
    """How one output format spells the parts of a cell, a header and the legend."""

    bold: Callable[[str], str]
    math: Callable[[str], str]  # a formula such as "p < 0.05" or "+0.0012"
    stack: Callable[[str, str], str]  # a cell with a second line
    escape: Callable[[str], str]
    pm: str
    dagger: str
    delta: str
    down: str
    up: str
    minus: str
    missing: str


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(char, char) for char in str(text))


MARKDOWN = _Syntax(bold=lambda s: f"**{s}**", math=lambda s: s, stack=lambda a, b: f"{a}<br>{b}",
                   escape=lambda s: str(s).replace("|", r"\|"), pm="±", dagger="†", delta="Δ", down="↓",
                   up="↑", minus="−", missing="–")
LATEX = _Syntax(bold=lambda s: f"\\textbf{{{s}}}", math=lambda s: f"${s}$",
                stack=lambda a, b: f"\\shortstack{{{a}\\\\ {{\\scriptsize {b}}}}}", escape=_tex_escape,
                pm=r"$\pm$", dagger=r"$^\dagger$", delta=r"$\Delta$", down=r"$\downarrow$", up=r"$\uparrow$",
                minus="$-$", missing="--")


def _cell_text(cell: _Cell, syntax: _Syntax) -> str:
    if cell.mean is None:
        text = syntax.missing
    else:
        spread = "" if cell.std is None else f" {syntax.pm} {cell.std}"
        text = f"{cell.mean}{spread} ({cell.n})"
    text = (syntax.bold(text) if cell.bold else text) + (syntax.dagger if cell.dagger else "")
    if cell.ref is None:
        return text
    delta = "" if cell.delta is None else f" ({syntax.delta} {syntax.math(cell.delta)})"
    return syntax.stack(text, f"ref {cell.ref}{delta}")


def _metric_header(metric: str, syntax: _Syntax) -> str:
    info = METRICS.get(metric)
    return f"{syntax.escape(info.label)} {syntax.up if info.higher_is_better else syntax.down}"


def _legend(summary: pd.DataFrame, syntax: _Syntax) -> list[str]:
    """The lines that explain the cells: format, bold, dagger, reference."""
    lines = [f"Cells: mean {syntax.pm} std (n) over seeds; {syntax.bold('bold')}: best mean of the column "
             f"({syntax.down} lower, {syntax.up} higher is better); {syntax.missing}: no value."]
    baseline = summary["baseline"].dropna()
    if len(baseline):
        lines.append(f"{syntax.dagger}: differs from {syntax.escape(baseline.iat[0])} at {syntax.math('p < 0.05')} "
                     f"(paired t-test over matching seeds, {syntax.escape('scipy.stats.ttest_rel')}).")
    if summary["ref_value"].notna().any():
        sources = [s for s in pd.unique(summary["ref_source"].dropna()) if s]
        cited = f" ({'; '.join(map(syntax.escape, sources))})" if sources else ""
        lines.append(f"ref: reference value{cited}; {syntax.delta} = ours {syntax.minus} ref.")
    return lines


def _md_row(fields: Iterable[str]) -> str:
    return "| " + " | ".join(fields) + " |"


def to_markdown(summary: pd.DataFrame, *, notes: Sequence[str] = ()) -> str:
    """A Markdown table of ``summary`` (from ``summarize``), then the legend and ``notes``."""
    columns, models, cells = _grid(summary)
    header = ["model", *(f"{MARKDOWN.escape(d)}<br>{_metric_header(m, MARKDOWN)}" for d, m in columns)]
    lines = [_md_row(header), _md_row([":---", *([":---:"] * len(columns))])]
    for model in models:
        texts = (_cell_text(cells.get((model, *column), _Cell()), MARKDOWN) for column in columns)
        lines.append(_md_row([MARKDOWN.escape(model), *texts]))
    return "\n".join(lines) + "\n\n" + "\n\n".join([*_legend(summary, MARKDOWN), *notes]) + "\n"


def _tex_dataset_header(columns: list[tuple[str, str]]) -> list[str]:
    """The \\multicolumn dataset row and its \\cmidrule lines (datasets are contiguous)."""
    heads, rules, start = [""], [], 2
    for dataset, group in itertools.groupby(columns, key=lambda column: column[0]):
        width = len(list(group))
        heads.append(f"\\multicolumn{{{width}}}{{c}}{{{_tex_escape(dataset)}}}")
        rules.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
        start += width
    return [" & ".join(heads) + r" \\", " ".join(rules)]


def to_latex(summary: pd.DataFrame, *, notes: Sequence[str] = ()) -> str:
    """A booktabs tabular of ``summary`` (from ``summarize``), then the legend and ``notes``."""
    columns, models, cells = _grid(summary)
    lines = [f"\\begin{{tabular}}{{l{'c' * len(columns)}}}", r"\toprule", *_tex_dataset_header(columns),
             " & ".join(["Model", *(_metric_header(m, LATEX) for _, m in columns)]) + r" \\", r"\midrule"]
    for model in models:
        texts = (_cell_text(cells.get((model, *column), _Cell()), LATEX) for column in columns)
        lines.append(" & ".join([_tex_escape(model), *texts]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    footer = [*_legend(summary, LATEX), *map(_tex_escape, notes)]
    return "\n".join(lines) + "\n\\par\\smallskip{\\footnotesize " + " \\\\\n".join(footer) + "}\n"


def to_csv(summary: pd.DataFrame) -> str:
    """``summary`` as CSV text: ``CSV_COLUMNS``, floats written to round-trip exactly."""
    return summary.to_csv(index=False, columns=CSV_COLUMNS)


# ---- plot -------------------------------------------------------------------------------------

def _panel_metric(rows: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    """The first candidate metric with a value in ``rows`` (one dataset of an aggregate)."""
    present = set(rows.loc[rows["n"] > 0, "metric"])
    return next((name for name in candidates if name in present), None)


def _panels(table: pd.DataFrame, x: str, candidates: Sequence[str]) -> list[tuple[str, pd.DataFrame, str]]:
    """(dataset, its rows, its y metric) for each dataset of an aggregate with x and a y candidate."""
    panels = []
    for dataset, rows in table.groupby("dataset", sort=False):
        y = _panel_metric(rows, candidates)
        if y is not None and _panel_metric(rows, [x]):
            panels.append((dataset, rows, y))
    return panels


def _draw_panel(ax, rows: pd.DataFrame, x: str, y: str, colors: dict[str, str]) -> None:
    means = rows.pivot(index="model", columns="metric", values="mean")
    spreads = rows.pivot(index="model", columns="metric", values="std").fillna(0.0)  # one seed: no bar
    for model in pd.unique(rows["model"]):
        if np.isfinite([means.at[model, x], means.at[model, y]]).all():
            ax.errorbar(means.at[model, x], means.at[model, y], xerr=spreads.at[model, x],
                        yerr=spreads.at[model, y], fmt="o", capsize=3, color=colors[model], label=model)
    ax.set_xlabel(_metric_header(x, MARKDOWN))
    ax.set_ylabel(_metric_header(y, MARKDOWN))
    ax.legend(fontsize="small")


def plot_tradeoff(data: pd.DataFrame, path: str | Path, x: str = "perplexity",
                  y: str | Sequence[str] = ("mse", "miou")) -> Path:
    """Save a PNG with one panel per dataset: a point per model at its mean (x, y), error bars = std.

    Args:
        data: a cells frame (``cells_frame``) or an aggregate (``aggregate`` / ``summarize``).
        path: the PNG to write (atomically).
        x: the metric on the x axis.
        y: the metric on the y axis, or candidates: each panel uses the first one its dataset has
            (by default mse, and mIoU for label datasets). Datasets without x or any y are skipped;
            with none left the figure says so.
    Returns:
        ``path``.
    """
    candidates = [y] if isinstance(y, str) else list(y)
    table = data if "metric" in data.columns else aggregate(data, [x, *candidates])
    panels = _panels(table, x, candidates)
    figure = Figure(figsize=(4.5 * max(1, len(panels)), 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, max(1, len(panels)), squeeze=False)[0]
    palette = [f"C{i}" for i in range(10)]
    colors = {model: palette[i % 10] for i, model in enumerate(pd.unique(table["model"]))}
    for ax, (dataset, rows, y_metric) in zip(axes, panels):
        _draw_panel(ax, rows, x, y_metric, colors)
        ax.set_title(dataset)
    if not panels:
        axes[0].text(0.5, 0.5, f"no dataset has {x} and {' or '.join(candidates)}", ha="center", va="center")
        axes[0].set_axis_off()
    return atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png", dpi=120))


# ---- files ------------------------------------------------------------------------------------

def order_records(records: list[CellRecord], cell_ids: Sequence[str] | None = None) -> list[CellRecord]:
    """The cells to tabulate, in table order: those of ``cell_ids`` in that (suite grid) order, or
    all of them with models in the registry's order (SQ-VAE types first, then the baselines)."""
    if cell_ids is not None:
        position = {cell_id: i for i, cell_id in enumerate(cell_ids)}
        return sorted((r for r in records if r.cell_id in position), key=lambda r: position[r.cell_id])
    from bench.models import MODELS

    known = MODELS.names()

    def rank(record: CellRecord) -> tuple:
        model = record.info.get("model")
        return (known.index(model) if model in known else len(known), str(model), record.cell_id)

    return sorted(records, key=rank)


def write_tables(output: str | Path, results_dir: str | Path, *, baseline: str | None = None,
                 metrics: Sequence[str] | None = None, reference: str | Path | None = None,
                 cell_ids: Sequence[str] | None = None) -> dict:
    """Rebuild the tables of the cells under ``output`` and write them into ``results_dir``.

    Args:
        output: a suite's output folder (holding ``cells/``).
        results_dir: created if needed; receives table.md, table.tex, table.csv and tradeoff.png.
        baseline: the model to test against; default "vqvae" when it ran, else no test.
        metrics: as ``summarize``.
        reference: a reference CSV (``load_reference``).
        cell_ids: only these cells, in this order (a suite's grid); default every cell in ``output``.
    Returns:
        {"table.md": Path, "table.tex": Path, "table.csv": Path, "tradeoff.png": Path,
         "markdown": the Markdown text}.
    Raises:
        BenchError: no completed cell. ConfigError: as ``summarize`` and ``load_reference``.
    """
    records = order_records(load_cells(Path(output)), cell_ids)
    frame, notes = cells_frame(records), exclusion_notes(records)
    if frame.empty:
        raise BenchError(f"no completed cells under {Path(output) / CELLS}" + "".join(f"; {n}" for n in notes))
    if baseline is None and DEFAULT_BASELINE in set(frame["model"]):
        baseline = DEFAULT_BASELINE
    summary = summarize(frame, metrics, baseline=baseline,
                        reference=None if reference is None else load_reference(reference))
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    texts = {"table.md": to_markdown(summary, notes=notes), "table.tex": to_latex(summary, notes=notes),
             "table.csv": to_csv(summary)}
    paths = {name: atomic_write(results / name, lambda tmp, text=text: tmp.write_text(text))
             for name, text in texts.items()}
    paths["tradeoff.png"] = plot_tradeoff(frame, results / "tradeoff.png")
    return {**paths, "markdown": texts["table.md"]}
