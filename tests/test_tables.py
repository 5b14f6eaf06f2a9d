"""bench.tables against numbers computed here by hand (numpy, scipy) on a fake results folder."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from bench import tables
from bench.errors import ConfigError
from bench.metrics import METRICS
from bench.store import cell_dir, load_cells, write_json

SEEDS = (0, 1, 2)
FAILED = ("celeba_mask", "sqvae-vmf", 2)
# dataset -> model -> metric -> one value per seed (None: reported as null); sqvae-vmf lacks seed 2
# on celeba_mask, whose cell failed.
VALUES = {
    "mnist": {
        "vqvae": {"mse": [0.0100, 0.0110, 0.0105], "perplexity": [50.0, 60.0, 55.0],
                  "usage": [0.10, 0.12, 0.11], "fid": [None, None, None]},
        "sqvae-gauss-1": {"mse": [0.0080, 0.0085, 0.0082], "perplexity": [400.0, 410.0, 395.0],
                          "usage": [0.90, 0.95, 0.92]},
        "sqvae-vmf": {"mse": [0.0102, 0.0095, 0.0111], "perplexity": [52.0, 58.0, 61.0],
                      "usage": [0.20, 0.15, 0.30]},
    },
    "celeba_mask": {
        "vqvae": {"miou": [0.60, 0.62, 0.61], "perplexity": [30.0, 35.0, 33.0], "usage": [1.0, 1.0, 1.0]},
        "sqvae-gauss-1": {"miou": [0.70, 0.71, 0.73], "perplexity": [80.0, 85.0, 90.0], "usage": [1.0, 1.0, 1.0]},
        "sqvae-vmf": {"miou": [0.65, 0.58], "perplexity": [40.0, 36.0], "usage": [0.5, 0.6]},
    },
}
MODELS = ["sqvae-gauss-1", "sqvae-vmf", "vqvae"]  # the order of the (sorted) cell ids
METRIC_NAMES = ["mse", "perplexity", "usage", "miou"]


def by_seed(dataset: str, model: str, metric: str) -> dict[int, float]:
    listed = VALUES[dataset][model].get(metric, [])
    return {seed: value for seed, value in zip(SEEDS, listed) if value is not None}


def write_cell(output, dataset, model, seed, test, status="completed"):
    cell_id = f"{dataset}-{model}-s{seed}"
    folder = cell_dir(output, cell_id)
    write_json(folder / "config.json", {"cell_id": cell_id, "suite": "tiny", "dataset": dataset, "model": model,
                                        "seed": seed, "config": {}})
    write_json(folder / "status.json", {"status": status})
    if test is not None:
        write_json(folder / "metrics.json", {"test": test, "test_stochastic": {}, "best_epoch": 1,
                                             "best_val_loss": 0.0, "steps": 10, "history": [], "seconds": 1.0})


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    for dataset, models in VALUES.items():
        for model, metrics in models.items():
            for i in range(len(next(iter(metrics.values())))):
                write_cell(root, dataset, model, SEEDS[i], {name: values[i] for name, values in metrics.items()})
    write_cell(root, *FAILED, test=None, status="failed")
    return root


@pytest.fixture(scope="module")
def frame(output):
    return tables.cells_frame(load_cells(output))


@pytest.fixture(scope="module")
def written(output, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    reference = results / "reference.csv"
    reference.write_text("dataset,model,metric,value,source\n"
                         "mnist,vqvae,mse,0.0100,Takida et al. 2022 Table 3\n"
                         "celeba_mask,sqvae-gauss-1,miou,0.75,Takida et al. 2022 Table 3\n")
    return tables.write_tables(output, results / "tables", reference=reference)


def markdown_cells(markdown: str) -> dict[tuple[str, str, str], str]:
    """{(model, dataset, metric): cell text} of a table written by to_markdown."""
    rows = [line[2:-2].split(" | ") for line in markdown.splitlines() if line.startswith("| ")]
    infos = [METRICS.get(name) for name in METRICS.names()]
    labels = {f"{info.label} {'↑' if info.higher_is_better else '↓'}": info.name for info in infos}
    columns = [tuple(head.split("<br>")) for head in rows[0][1:]]
    return {(row[0], dataset, labels[label]): text
            for row in rows[2:] for (dataset, label), text in zip(columns, row[1:])}


def scipy_p(dataset: str, model: str, metric: str, baseline: str = "vqvae") -> float:
    ours, theirs = by_seed(dataset, model, metric), by_seed(dataset, baseline, metric)
    seeds = sorted(set(ours) & set(theirs))
    if model == baseline or len(seeds) < 2:
        return math.nan
    return stats.ttest_rel([ours[s] for s in seeds], [theirs[s] for s in seeds]).pvalue


def shown_columns():
    return [(m, d, metric) for d in VALUES for m in MODELS for metric in METRIC_NAMES if by_seed(d, "vqvae", metric)]


def test_cells_frame_has_one_row_per_completed_cell(frame):
    assert len(frame) == 17
    assert list(frame.columns[:5]) == tables.INFO_COLUMNS
    assert "celeba_mask-sqvae-vmf-s2" not in set(frame["cell_id"])
    assert frame["fid"].isna().all()
    assert list(frame["model"].unique()) == MODELS


def test_aggregate_matches_numpy(frame):
    summary = tables.aggregate(frame, METRIC_NAMES).set_index(["dataset", "model", "metric"])
    for dataset in VALUES:
        for model in MODELS:
            for metric in METRIC_NAMES:
                values = np.array(list(by_seed(dataset, model, metric).values()))
                row = summary.loc[(dataset, model, metric)]
                assert row["n"] == len(values)
                if len(values):
                    assert row["mean"] == pytest.approx(values.mean(), rel=1e-12)
                    assert row["std"] == pytest.approx(values.std(ddof=1), rel=1e-12)
                else:
                    assert math.isnan(row["mean"]) and math.isnan(row["std"])


def test_aggregate_std_is_nan_for_one_seed(frame):
    single = tables.aggregate(frame[frame["seed"] == 0], ["mse"])
    assert (single.dropna(subset=["mean"])["n"] == 1).all() and single["std"].isna().all()


def test_paired_test_matches_scipy_on_matching_seeds(frame):
    for metric in METRIC_NAMES:
        p_values = tables.paired_test(frame, "vqvae", metric)
        for dataset in VALUES:
            for model in MODELS:
                expected = scipy_p(dataset, model, metric)
                assert p_values[(dataset, model)] == pytest.approx(expected, rel=1e-12, nan_ok=True)
    # sqvae-vmf lacks seed 2 on celeba_mask: two pairs (seeds 0, 1), still a p-value
    assert not math.isnan(tables.paired_test(frame, "vqvae", "miou")[("celeba_mask", "sqvae-vmf")])


def test_paired_test_needs_two_pairs_and_a_known_baseline(frame):
    assert tables.paired_test(frame[frame["seed"] == 0], "vqvae", "mse").isna().all()
    with pytest.raises(ConfigError, match="did you mean 'vqvae'"):
        tables.paired_test(frame, "vqvae2", "mse")


def test_repeated_seed_is_an_error(frame):
    with pytest.raises(ConfigError, match="repeat"):
        tables.aggregate(frame.iloc[[0, 0]], ["mse"])


def test_cell_text_and_digits(written):
    cells = markdown_cells(written["markdown"])
    assert cells[("vqvae", "mnist", "mse")] == "0.01050 ± 0.00050 (3)<br>ref 0.01000 (Δ +0.00050)"
    assert cells[("vqvae", "mnist", "perplexity")] == "55.0 ± 5.0 (3)"
    vmf = np.array([0.65, 0.58])
    assert cells[("sqvae-vmf", "celeba_mask", "miou")].startswith(f"{vmf.mean():.4f} ± {vmf.std(ddof=1):.4f} (2)")


def test_bold_follows_each_metrics_direction(written):
    cells = markdown_cells(written["markdown"])
    bold = {key for key, text in cells.items() if text.startswith("**")}
    assert bold == {
        ("sqvae-gauss-1", "mnist", "mse"),  # lower is better
        ("sqvae-gauss-1", "mnist", "perplexity"), ("sqvae-gauss-1", "mnist", "usage"),
        ("sqvae-gauss-1", "celeba_mask", "perplexity"), ("sqvae-gauss-1", "celeba_mask", "miou"),
        ("sqvae-gauss-1", "celeba_mask", "usage"), ("vqvae", "celeba_mask", "usage"),  # a tie: both
    }


def test_dagger_marks_exactly_the_significant_differences(written):
    cells = markdown_cells(written["markdown"])
    daggers = {key for key, text in cells.items() if "†" in text}
    expected = {key for key in shown_columns() if scipy_p(key[1], key[0], key[2]) < 0.05}
    assert daggers == expected and expected  # some, not all
    assert len(expected) < len(cells)
    assert "†: differs from vqvae at p < 0.05 (paired t-test over matching seeds" in written["markdown"]


def test_failed_cell_is_excluded_and_reported(written):
    note = "1 failed cell excluded: celeba_mask-sqvae-vmf-s2"
    assert note in written["markdown"]
    assert note.replace("_", r"\_") in written["table.tex"].read_text()


def test_latex_uses_booktabs_and_escapes(written):
    tex = written["table.tex"].read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){2-4}"):
        assert rule in tex
    assert r"\multicolumn{3}{c}{celeba\_mask}" in tex
    assert r"\textbf{" in tex and r"$^\dagger$" in tex
    assert "celeba_mask" not in tex and r"ttest\_rel" in tex


def test_csv_round_trips_the_numbers(written, frame):
    with written["table.csv"].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == tables.CSV_COLUMNS
    summary = tables.aggregate(frame, ["mse", "perplexity", "usage", "miou"]).set_index(["dataset", "model", "metric"])
    for row in rows:
        expected = summary.loc[(row["dataset"], row["model"], row["metric"])]
        assert float(row["mean"]) == expected["mean"] and float(row["std"]) == expected["std"]
        assert int(row["n"]) == expected["n"]
        assert float(row["p_value"] or "nan") == pytest.approx(
            scipy_p(row["dataset"], row["model"], row["metric"]), rel=1e-12, nan_ok=True)


def test_reference_shows_difference_ours_minus_ref(written):
    with written["table.csv"].open(newline="") as handle:
        rows = {(r["dataset"], r["model"], r["metric"]): r for r in csv.DictReader(handle)}
    row = rows[("celeba_mask", "sqvae-gauss-1", "miou")]
    ours = np.mean([0.70, 0.71, 0.73])
    assert float(row["ref_value"]) == 0.75 and float(row["delta"]) == pytest.approx(ours - 0.75)
    assert row["ref_source"] == "Takida et al. 2022 Table 3"
    cell = markdown_cells(written["markdown"])[("sqvae-gauss-1", "celeba_mask", "miou")]
    assert cell.endswith(f"<br>ref 0.7500 (Δ {ours - 0.75:+.4f})")
    assert "ref: reference value (Takida et al. 2022 Table 3); Δ = ours − ref." in written["markdown"]


@pytest.mark.parametrize("text, line, problem", [
    ("dataset,model,metric,value\nmnist,vqvae,mse,0.01\nmnist,vqvae,fid,abc\n", 3, "is not a number"),
    ("dataset,model,value\nmnist,vqvae,0.01\n", 1, "missing column(s) 'metric'"),
    ("dataset,model,metric,value\nmnist,vqvae,mes,0.01\n", 2, "did you mean 'mse'"),
])
def test_bad_reference_names_file_line_and_columns(tmp_path, text, line, problem):
    path = tmp_path / "ref.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        tables.load_reference(path)
    message = str(caught.value)
    assert str(path) in message and f"line {line}:" in message and problem in message
    assert "dataset,model,metric,value" in message


def test_a_dataset_shows_only_metrics_its_cells_reported(frame):
    summary = tables.summarize(frame, ["mse", "fid"], baseline="vqvae")
    cells = markdown_cells(tables.to_markdown(summary))
    assert not any(metric == "fid" for _, _, metric in cells)  # nobody reported FID
    assert not any(d == "celeba_mask" and metric == "mse" for _, d, metric in cells)  # label maps: no mse
    assert {cells[(m, "mnist", "mse")] for m in MODELS} != {"–"}


def test_a_missing_value_in_a_shown_column_is_a_dash(frame):
    frame = frame.copy()
    frame.loc[frame["model"] == "vqvae", "mse"] = float("nan")
    cells = markdown_cells(tables.to_markdown(tables.summarize(frame, ["mse"])))
    assert cells[("vqvae", "mnist", "mse")] == "–"


def test_writes_every_file_and_a_valid_png(written):
    for name in ("table.md", "table.tex", "table.csv", "tradeoff.png"):
        assert written[name].is_file() and written[name].name == name
    assert written["table.md"].read_text() == written["markdown"]
    assert written["tradeoff.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(written["tradeoff.png"]) as image:
        image.verify()
    assert not list(written["tradeoff.png"].parent.glob("*.tmp"))
