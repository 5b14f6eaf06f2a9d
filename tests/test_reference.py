"""Published numbers beside ours: a suite's ``reference:`` key (resolved, validated at load), the
shipped files of results/reference/, and `table SUITE` printing ``ref V (Δ ours − V)``."""
from __future__ import annotations

import pytest

from bench import cli, tables
from bench.errors import ConfigError
from bench.store import cell_dir, write_json
from bench.suite import expand, load_suite

SUITE = """name: tiny-ref
datasets:
  shapes: {options: {size: 32, n_train: 8, n_val: 8, n_test: 8}}
models: [vqvae, sqvae-gauss-1]
seeds: [0]
train: {epochs: 1}
reference: {reference}
"""
REFERENCE = ("dataset,model,metric,value,source\n"
             "shapes,vqvae,psnr,20.0,Made-up et al. 2099 Table 1\n"
             "shapes,vqvae,perplexity,30.0,Made-up et al. 2099 Table 1\n")


def write_suite(folder, reference: str):
    path = folder / "tiny.yaml"
    path.write_text(SUITE.replace("{reference}", reference))
    return path


def test_reference_is_resolved_relative_to_the_suite_file(tmp_path):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "mine.csv").write_text(REFERENCE)
    suite = load_suite(write_suite(tmp_path, "refs/mine.csv"))
    assert suite.reference == (tmp_path / "refs" / "mine.csv").resolve()


def test_reference_by_shipped_name_and_the_shipped_file_is_valid(tmp_path):
    assert "vqwae2023_table1" in tables.shipped_references()
    suite = load_suite(write_suite(tmp_path, "vqwae2023_table1"))
    assert suite.reference == tables.REFERENCE_DIR / "vqwae2023_table1.csv"
    published = tables.load_reference(suite.reference)
    assert set(published["metric"]) == {"ssim", "psnr", "lpips", "fid", "perplexity"}
    assert set(published["dataset"]) == {"mnist", "cifar10", "svhn", "celeba"}
    assert (tables.REFERENCE_DIR / "README.md").is_file()


def test_shipped_paper_suite_names_the_vqwae_table():
    assert load_suite("paper").reference.name == "vqwae2023_table1.csv"


def test_missing_reference_names_the_suite_key_and_the_shipped_files(tmp_path):
    with pytest.raises(ConfigError, match=r"tiny.yaml: reference: .*'nope.csv' not found.*shipped: vqwae2023_table1"):
        load_suite(write_suite(tmp_path, "nope.csv"))


def test_malformed_reference_fails_at_load(tmp_path):
    (tmp_path / "bad.csv").write_text("dataset,model,metric,value\nshapes,vqvae,psnrr,20\n")
    with pytest.raises(ConfigError, match=r"tiny.yaml: reference: .*bad.csv: line 2: .*did you mean 'psnr'"):
        load_suite(write_suite(tmp_path, "bad.csv"))


def write_completed_cells(suite, output, values: dict[str, dict]):
    for cell in expand(suite):
        folder = cell_dir(output, cell.cell_id)
        write_json(folder / "config.json", {"cell_id": cell.cell_id, "suite": suite.name, "dataset": cell.dataset,
                                            "model": cell.model, "seed": cell.seed, "config": {}})
        write_json(folder / "status.json", {"status": "completed"})
        write_json(folder / "metrics.json", {"test": values[cell.model], "test_stochastic": {}, "best_epoch": 1,
                                             "best_val_loss": 0.0, "steps": 1, "history": [], "seconds": 1.0})


def test_table_of_a_suite_shows_the_published_value_and_the_difference(tmp_path, capsys):
    (tmp_path / "ref.csv").write_text(REFERENCE)
    path = write_suite(tmp_path, "ref.csv")
    output = tmp_path / "runs"
    write_completed_cells(load_suite(path), output, {
        "vqvae": {"mse": 0.01, "psnr": 21.5, "ssim": 0.8, "lpips": None, "perplexity": 31.25},
        "sqvae-gauss-1": {"mse": 0.008, "psnr": 23.0, "ssim": 0.85, "lpips": None, "perplexity": 40.0},
    })
    assert cli.main(["table", str(path), "--output", str(output), "--results", str(tmp_path / "res")]) == 0
    printed = capsys.readouterr().out
    assert "ref 20.00 (Δ +1.50)" in printed  # psnr: 2 registered decimals
    assert "ref 30.0 (Δ +1.2)" in printed  # perplexity: 1 decimal
    assert "Made-up et al. 2099 Table 1" in printed
    assert "PSNR (dB) ↑" in printed and "SSIM ↑" in printed and "LPIPS" not in printed  # null everywhere: no column
