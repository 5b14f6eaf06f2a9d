"""Bad input (issue 10, §3): each is one "sqvae-bench: error:" message naming the file or option, exit
code 2, no traceback, and nothing created; plus the pieces behind that: bench.checks, the store's
unreadable files, stale temporary files, and the vMF warnings.

Nothing here trains, except the one test of ``run`` redoing a cell whose status.json is corrupt.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import checks, store
from bench.atomic import clean_stale_tmp, tmp_path as atomic_tmp_path
from bench.data import celebamask, torchvision_sets
from bench.data.registry import DATASETS, DatasetEntry
from bench.errors import ConfigError, DataError, StoreError
from bench.run import RunConfig
from sqvae.bessel import log_ive, vmf_log_normaliser
from tests import data_fixtures as fx
from tests.conftest import run_main, run_subprocess, write_suite

PREFIX = "sqvae-bench: error: "
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
MNIST_SUITE = {"name": "mn", "datasets": ["mnist"], "models": ["vqvae"], "seeds": [0], "train": {"epochs": 1}}
ONE_CELL = ["--only", "model=vqvae,seed=0"]


# -- helpers ---------------------------------------------------------------------------------------
def snapshot(root: Path) -> set[Path]:
    """Every path under ``root``, to show that a command created (or removed) nothing."""
    return set(root.rglob("*"))


def assert_rejected(result, *fragments: str) -> None:
    """Exit 2; stderr is one error line (a DataError adds indented detail lines); no traceback."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.out + result.err
    lines = result.err.rstrip("\n").splitlines()
    assert lines and lines[0].startswith(PREFIX), result.err
    assert all(line.startswith("  ") for line in lines[1:]), result.err
    assert sum(line.startswith(PREFIX) for line in lines) == 1
    for fragment in fragments:
        assert str(fragment) in result.err, (fragment, result.err)


def run_cli(args: list, cwd: Path, *fragments: str) -> None:
    """Run the CLI in-process on bad input: rejected as ``assert_rejected`` says, and nothing created."""
    before = snapshot(cwd)
    assert_rejected(run_main(args, cwd=cwd), *fragments)
    assert snapshot(cwd) == before


def run_args(suite, root: Path, *extra) -> list:
    return ["run", suite, "--output", root / "runs", "--results", root / "results", "--no-progress", *extra]


def fake_cell(output: Path, cell_id: str, status: str = "completed", mse: float = 0.1) -> Path:
    """A cell folder as `run` leaves it, written by hand (no training)."""
    folder = store.cell_dir(output, cell_id)
    store.write_json(folder / "config.json", {"cell_id": cell_id, "suite": "tiny", "dataset": "shapes",
                                              "model": "vqvae", "seed": 0, "config": {}})
    store.write_json(folder / "status.json", {"status": status})
    if status == "completed":
        store.write_json(folder / "metrics.json", {"test": {"mse": mse, "perplexity": 3.0}})
    return folder


def first_cell_id(suite: Path, cwd: Path) -> str:
    """The id of the suite's first cell (vqvae, seed 0 in the tiny suite), from `show --json`."""
    return json.loads(run_main(["show", suite, "--json"], cwd=cwd).out)[0]["cell_id"]


def truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def config(dataset: str, **options) -> RunConfig:
    return RunConfig(dataset=dataset, model="vqvae", data_options=options)


# -- 1. suite files --------------------------------------------------------------------------------
def directory_suite(root: Path) -> Path:
    (root / "suite.yaml").mkdir()
    return root / "suite.yaml"


def bytes_suite(content: bytes):
    def make(root: Path) -> Path:
        (root / "suite.yaml").write_bytes(content)
        return root / "suite.yaml"
    return make


def patched_suite(patch: dict):
    return lambda root: write_suite(root / "suite.yaml", patch)


def including_suite(root: Path) -> Path:
    (root / "suite.yaml").write_text("include: nowhere.yaml\nname: x\n")
    return root / "suite.yaml"


SUITE_CASES = {
    "directory": (directory_suite, ["is a directory, not a suite file"]),
    "random bytes": (bytes_suite(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes()),
                     ["not a text YAML file"]),
    "png": (bytes_suite(PNG), ["not a text YAML file"]),
    "no seeds": (patched_suite({"seeds": []}), ["seeds: needs at least one seed"]),
    "everything excluded": (patched_suite({"exclude": [{"dataset": "shapes"}]}), ["exclude:", "grid is empty"]),
    "top-level train": (patched_suite({"train": {"epochs": 0}}), ["train.epochs: must be an integer >= 1; got 0"]),
    "dataset train": (patched_suite({"datasets": {"shapes": {"train": {"epochs": 0}}}}),
                      ["datasets.shapes.train.epochs: must be an integer >= 1; got 0"]),
    "missing include": (including_suite, ["include: nowhere.yaml not found"]),
    "yaml error on one line": (bytes_suite(b"name: x\nmodels: [vqvae\n"), ["not valid YAML: line "]),
}


@pytest.mark.parametrize("case", list(SUITE_CASES))
def test_bad_suite_file(tmp_path, case):
    make, fragments = SUITE_CASES[case]
    suite = make(tmp_path)
    run_cli(run_args(suite, tmp_path), tmp_path, str(suite), *fragments)
    run_cli(["show", suite], tmp_path, str(suite), *fragments)


def test_top_level_train_error_is_not_blamed_on_a_cell(tmp_path):
    suite = write_suite(tmp_path / "suite.yaml", {"train": {"epochs": 0}})
    result = run_main(["show", suite], cwd=tmp_path)
    assert result.err.strip() == f"{PREFIX}{suite}: train.epochs: must be an integer >= 1; got 0"


def test_missing_include_names_the_including_file(tmp_path):
    suite = including_suite(tmp_path)
    result = run_main(["show", suite], cwd=tmp_path)
    assert result.err.startswith(f"{PREFIX}{suite}: include: nowhere.yaml not found")
    assert str(tmp_path / "nowhere.yaml") in result.err


def test_only_that_selects_nothing_still_names_only(tmp_path):
    suite = write_suite(tmp_path / "suite.yaml")
    run_cli(run_args(suite, tmp_path, "--only", "model=vqvae-ema"), tmp_path, "--only 'model=vqvae-ema' selects no cell")


def test_binary_suite_in_a_real_process(tmp_path):
    suite = bytes_suite(PNG)(tmp_path)
    before = snapshot(tmp_path)
    assert_rejected(run_subprocess(run_args(suite, tmp_path), cwd=tmp_path), str(suite), "not a text YAML file")
    assert snapshot(tmp_path) == before


# -- 2. output and results folders -----------------------------------------------------------------
FOLDER_CHECKS = [(checks.check_output_dir, "--output"), (checks.check_results_dir, "--results")]


@pytest.mark.parametrize("check, option", FOLDER_CHECKS)
def test_folder_check_accepts_writable_and_creatable_folders(tmp_path, check, option):
    check(tmp_path)
    check(tmp_path / "new" / "deeper")
    assert snapshot(tmp_path) == set()


@pytest.mark.parametrize("check, option", FOLDER_CHECKS)
def test_folder_check_rejects_a_file_and_a_path_under_a_file(tmp_path, check, option):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=f"^{option} {tmp_path / 'f'} is a file, not a folder$"):
        check(tmp_path / "f")
    with pytest.raises(ConfigError, match=f"cannot create it: {tmp_path / 'f'} is a file"):
        check(tmp_path / "f" / "sub")


@pytest.mark.parametrize("check, option", FOLDER_CHECKS)
def test_folder_check_rejects_a_folder_without_write_permission(tmp_path, monkeypatch, check, option):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    with pytest.raises(ConfigError, match=f"{option} {locked}: no permission to write in this folder"):
        check(locked)
    with pytest.raises(ConfigError, match=f"cannot create it: no permission to write in {locked}"):
        check(locked / "new")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere: permissions are tested through os.access above")
def test_folder_check_with_real_permissions(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ConfigError, match="no permission to write"):
            checks.check_output_dir(locked / "runs")
    finally:
        locked.chmod(0o700)


# -- 3. devices ------------------------------------------------------------------------------------
def test_device_check_accepts_auto_and_cpu():
    checks.check_device("auto")
    checks.check_device("cpu")


def test_device_check_rejects_an_unknown_name_listing_the_valid_forms():
    with pytest.raises(ConfigError, match="--device 'gpu0' is not a device.*valid: auto, cpu, cuda, cuda:N, mps"):
        checks.check_device("gpu0")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_device_check_without_a_gpu(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as error:
        checks.check_device(name)
    assert str(error.value) == (f"--device {name}: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                                "use --device cpu or auto")


def test_device_check_counts_the_visible_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("cuda", "cuda:0", "cuda:1"):
        checks.check_device(name)
    with pytest.raises(ConfigError, match=r"--device cuda:2: only 2 CUDA GPUs visible \(cuda:0 to cuda:1\)"):
        checks.check_device("cuda:2")


def test_device_check_mps_without_apple_gpu(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device mps: no Apple GPU"):
        checks.check_device("mps")


# -- 4. data ---------------------------------------------------------------------------------------
@pytest.fixture
def tiny_cuts(monkeypatch):
    """Split the tiny fixture files (12 MNIST train images, 15 CIFAR10) as the real ones are split."""
    for name, cut in (("mnist", 8), ("fashion-mnist", 8), ("cifar10", 10)):
        monkeypatch.setitem(torchvision_sets.VAL_START, name, cut)


def check_data_error(tmp_path, dataset: str, *fragments) -> str:
    """check_datasets on ``dataset`` fails with a DataError naming each fragment and creates nothing."""
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as error:
        checks.check_datasets([config(dataset)], tmp_path)
    message = str(error.value)
    assert message.startswith(f"dataset '{dataset}': ")
    for fragment in fragments:
        assert str(fragment) in message
    assert snapshot(tmp_path) == before
    return message


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_check_passes_on_whole_files_and_reads_no_pixels(tmp_path, tiny_cuts, name, folder):
    fx.write_mnist(tmp_path, folder)
    before = snapshot(tmp_path)
    checks.check_datasets([config(name)], tmp_path)
    assert snapshot(tmp_path) == before  # no cache, no download


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_check_missing_files(tmp_path, name, folder):
    check_data_error(tmp_path, name, "data not found", tmp_path / folder / "raw", "train-images-idx3-ubyte",
                     "--download")


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: truncate(p), "truncated file?"),
    (lambda p: truncate(p, keep=10), "header cut short"),
    (lambda p: p.write_bytes(b""), "not an idx file"),
    (lambda p: p.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40), "not an idx file"),  # still gzipped
    (lambda p: fx.write_idx(p, np.zeros((5, 28, 27), np.uint8)), "not (n, 28, 28)"),
], ids=["truncated", "header cut", "empty", "gzip", "wrong dims"])
def test_idx_check_damaged_image_file(tmp_path, tiny_cuts, damage, fragment):
    fx.write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    damage(bad)
    check_data_error(tmp_path, "mnist", "malformed data", "t10k-images-idx3-ubyte", bad, fragment)


def test_idx_check_labels_that_do_not_match_the_images(tmp_path, tiny_cuts):
    fx.write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    fx.write_idx(bad, np.zeros(11, np.uint8))
    check_data_error(tmp_path, "mnist", bad, "(11,), not (12,)")


def test_idx_check_too_few_images_for_the_split(tmp_path):
    fx.write_mnist(tmp_path)
    check_data_error(tmp_path, "mnist", "has 12 images; the split needs more than 50000")


def test_cifar10_check_passes_on_whole_files(tmp_path, tiny_cuts):
    fx.write_cifar10(tmp_path)
    checks.check_datasets([config("cifar10")], tmp_path)


@pytest.mark.parametrize("name, damage, fragment", [
    ("data_batch_2", truncate, "cut short"),
    ("test_batch", lambda p: truncate(p, keep=len(p.read_bytes()) - 1), "cut short"),
    ("batches.meta", truncate, "not the CIFAR10 metadata"),
    ("data_batch_5", lambda p: p.unlink(), "missing data_batch_5"),
], ids=["truncated batch", "last byte lost", "truncated meta", "missing batch"])
def test_cifar10_check_damaged_files(tmp_path, tiny_cuts, name, damage, fragment):
    fx.write_cifar10(tmp_path)
    damage(tmp_path / "cifar-10-batches-py" / name)
    check_data_error(tmp_path, "cifar10", name, fragment)


CELEBA_PARTITION = [0, 1, 2, 0]


def test_celeba_check_passes_and_opens_no_image(tmp_path, monkeypatch):
    fx.write_celeba(tmp_path, CELEBA_PARTITION)
    from bench.data import celeba

    monkeypatch.setattr(celeba, "read_image", lambda path: pytest.fail("the check decoded an image"))
    checks.check_datasets([config("celeba")], tmp_path)


@pytest.mark.parametrize("damage, fragment", [
    (lambda folder: (folder / "img_align_celeba" / "000003.jpg").unlink(), "1 of the 4 images listed"),
    (lambda folder: (folder / "list_eval_partition.txt").unlink(), "data not found"),
    (lambda folder: (folder / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n"),
     "no images in the test partition"),
    (lambda folder: (folder / "list_eval_partition.txt").write_text("000001.jpg train\n"), "malformed line 1"),
], ids=["missing image", "missing partition", "empty split", "bad line"])
def test_celeba_check_damaged(tmp_path, damage, fragment):
    fx.write_celeba(tmp_path, CELEBA_PARTITION)
    damage(tmp_path / "celeba")
    check_data_error(tmp_path, "celeba", fragment)


def test_celebamask_check_passes_and_gaps_and_absence_fail(tmp_path, monkeypatch):
    fx.write_celebamask(tmp_path, {"train": 3, "val": 2, "test": 2})
    monkeypatch.setattr(celebamask, "read_label", lambda path: pytest.fail("the check decoded a label map"))
    checks.check_datasets([config("celebamask-hq")], tmp_path)
    (tmp_path / "CelebAMask-HQ" / "train_label" / "1.png").unlink()
    check_data_error(tmp_path, "celebamask-hq", tmp_path / "CelebAMask-HQ" / "train_label" / "1.png", "0..1.png")


def test_celebamask_check_missing(tmp_path):
    check_data_error(tmp_path, "celebamask-hq", "data not found", "cannot be downloaded automatically")


def test_generated_datasets_need_nothing(tmp_path):
    checks.check_datasets([config("shapes", size=28), config("shapes-labels")], tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_a_registered_check_runs_once_per_distinct_options(tmp_path, monkeypatch):
    calls = []
    entry = DatasetEntry(lambda root, download, seed, *, size=8: None, lambda **options: None,
                         lambda root, download, **options: calls.append((root, download, options)))
    monkeypatch.setitem(DATASETS._entries, "plugged", entry)
    configs = [config("plugged", size=8), config("plugged", size=8), config("plugged", size=16), config("plugged")]
    checks.check_datasets(configs, tmp_path, download=True)
    assert calls == [(tmp_path, True, {"size": 8}), (tmp_path, True, {"size": 16}), (tmp_path, True, {})]


def test_download_happens_once_in_the_check_then_the_files_are_checked(tmp_path, tiny_cuts, monkeypatch):
    fetched = []

    def fake_mnist(root, train, download):  # stands in for torchvision's MNIST download
        fetched.append(root)
        fx.write_mnist(Path(root))

    monkeypatch.setattr(torchvision_sets, "_datasets", lambda: types.SimpleNamespace(MNIST=fake_mnist))
    checks.check_datasets([config("mnist"), config("mnist")], tmp_path, download=True)
    assert fetched == [tmp_path]
    checks.check_datasets([config("mnist")], tmp_path, download=True)  # present now: no second download
    assert fetched == [tmp_path]


# -- 5. `run` rejects bad options and data before creating anything (wired in bench.lifecycle) -------
def test_run_output_is_a_file(tmp_path):
    suite = write_suite(tmp_path / "suite.yaml")
    (tmp_path / "out").write_text("x")
    run_cli(run_args(suite, tmp_path)[:2] + ["--output", tmp_path / "out", "--no-progress"], tmp_path,
            f"--output {tmp_path / 'out'} is a file")


def test_run_output_without_write_permission(tmp_path, monkeypatch):
    suite = write_suite(tmp_path / "suite.yaml")
    (tmp_path / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "locked" and real_access(path, mode))
    run_cli(["run", suite, "--output", tmp_path / "locked" / "runs", "--results", tmp_path / "results"], tmp_path,
            "--output", "no permission to write in", str(tmp_path / "locked"))


def test_run_results_is_a_file(tmp_path):
    suite = write_suite(tmp_path / "suite.yaml")
    (tmp_path / "results").write_text("x")
    run_cli(run_args(suite, tmp_path), tmp_path, f"--results {tmp_path / 'results'} is a file")


def test_run_device_gpu0(tmp_path):
    suite = write_suite(tmp_path / "suite.yaml")
    run_cli(run_args(suite, tmp_path, "--device", "gpu0"), tmp_path, "--device 'gpu0' is not a device", "cuda:N")


def test_run_device_cuda_without_a_gpu(tmp_path, monkeypatch):
    suite = write_suite(tmp_path / "suite.yaml")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run_cli(run_args(suite, tmp_path, "--device", "cuda"), tmp_path, "--device cuda: no CUDA GPU is visible")


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_run_with_an_empty_data_root(tmp_path, dry_run):
    suite = write_suite(tmp_path / "suite.yaml", base=MNIST_SUITE)
    (tmp_path / "data").mkdir()
    extra = ["--data-root", tmp_path / "data"] + (["--dry-run"] if dry_run else [])
    run_cli(run_args(suite, tmp_path, *extra), tmp_path, "dataset 'mnist': data not found",
            tmp_path / "data" / "MNIST" / "raw")


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_run_with_a_truncated_idx_file(tmp_path, dry_run):
    suite = write_suite(tmp_path / "suite.yaml", base=MNIST_SUITE)
    fx.write_mnist(tmp_path / "data")
    truncate(tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte")
    extra = ["--data-root", tmp_path / "data"] + (["--dry-run"] if dry_run else [])
    run_cli(run_args(suite, tmp_path, *extra), tmp_path, "dataset 'mnist': malformed data",
            "train-images-idx3-ubyte", "truncated file?")


def test_run_bad_option_in_a_real_process(tmp_path):
    suite = write_suite(tmp_path / "suite.yaml")
    (tmp_path / "out").write_text("x")
    before = snapshot(tmp_path)
    result = run_subprocess(["run", suite, "--output", tmp_path / "out", "--device", "cpu"], cwd=tmp_path)
    assert_rejected(result, f"--output {tmp_path / 'out'} is a file")
    assert snapshot(tmp_path) == before


# -- 6. `table` ------------------------------------------------------------------------------------
def test_table_on_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    run_cli(["table", tmp_path / "empty", "--results", tmp_path / "t"], tmp_path, f"{tmp_path / 'empty'} holds no run")


def test_table_on_a_folder_that_holds_no_run(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    run_cli(["table", tmp_path / "notes", "--results", tmp_path / "t"], tmp_path, "holds no run")


def test_table_without_a_completed_cell(tmp_path):
    fake_cell(tmp_path / "runs", "a", status="failed")
    run_cli(["table", tmp_path / "runs", "--results", tmp_path / "t"], tmp_path, "no completed cells",
            "1 failed cell excluded: a")


@pytest.mark.parametrize("name", ["metrics.json", "status.json", "config.json"])
def test_table_with_a_truncated_cell_file_names_it(tmp_path, name):
    fake_cell(tmp_path / "runs", "a")
    truncate(tmp_path / "runs" / "cells" / "a" / name)
    run_cli(["table", tmp_path / "runs", "--results", tmp_path / "t"], tmp_path,
            f"{tmp_path / 'runs' / 'cells' / 'a' / name} is not valid JSON (truncated?)", "sqvae-bench run")


def test_table_results_is_a_file(tmp_path):
    fake_cell(tmp_path / "runs", "a")
    (tmp_path / "t").write_text("x")
    run_cli(["table", tmp_path / "runs", "--results", tmp_path / "t"], tmp_path, f"--results {tmp_path / 't'} is a file")


def test_table_of_fake_cells_works(tmp_path):  # the fixture above is a valid run folder
    fake_cell(tmp_path / "runs", "a")
    result = run_main(["table", tmp_path / "runs", "--results", tmp_path / "t"], cwd=tmp_path)
    assert result.code == 0, result.err


def test_show_marks_an_unreadable_status(tmp_path):
    suite = write_suite(tmp_path / "suite.yaml")
    cell_id = first_cell_id(suite, tmp_path)
    folder = fake_cell(tmp_path / "runs", cell_id)
    truncate(folder / "status.json")
    result = run_main(["show", suite, "--output", tmp_path / "runs"], cwd=tmp_path)
    assert result.code == 0 and " unreadable " in result.out


# -- 7. the store ----------------------------------------------------------------------------------
@pytest.mark.parametrize("content, fragment", [
    (None, "is missing"),
    ('{"status": "compl', "is not valid JSON (truncated?)"),
    ("\xff\xfe", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not the dict expected"),
])
def test_read_json_names_the_file(tmp_path, content, fragment):
    path = tmp_path / "status.json"
    if content is not None:
        path.write_bytes(content.encode("latin1"))
    with pytest.raises(StoreError) as error:
        store.read_json(path)
    assert str(error.value).startswith(f"{path} {fragment}") and "\n" not in str(error.value)


def test_read_status_rejects_an_unknown_status(tmp_path):
    store.write_json(tmp_path / "status.json", {"status": "done"})
    with pytest.raises(StoreError, match="has status 'done', not one of running, completed, failed"):
        store.read_status(tmp_path)


def test_recover_status_sets_a_corrupt_status_aside(tmp_path):
    folder = fake_cell(tmp_path, "a")
    truncate(folder / "status.json")
    damaged = (folder / "status.json").read_bytes()
    warned = []
    assert store.recover_status(folder, warn=warned.append) == {"status": "pending"}
    (aside,) = folder.glob("status.json.corrupt-*")
    assert aside.read_bytes() == damaged and not (folder / "status.json").exists()
    assert len(warned) == 1 and str(folder / "status.json") in warned[0] and aside.name in warned[0]
    assert "restore the file" not in warned[0]  # the hint of `table`'s error does not apply here


def test_recover_status_redoes_a_completed_cell_whose_metrics_are_unreadable(tmp_path):
    folder = fake_cell(tmp_path, "a")
    truncate(folder / "metrics.json")
    warned = []
    assert store.recover_status(folder, warn=warned.append)["status"] == "failed"
    assert store.read_status(folder)["status"] == "failed" and not (folder / "metrics.json").exists()
    assert len(list(folder.glob("metrics.json.corrupt-*"))) == 1 and "metrics.json" in warned[0]


def test_recover_status_leaves_sound_cells_alone(tmp_path, capsys):
    folder = fake_cell(tmp_path, "a")
    before = {p: p.read_bytes() for p in folder.iterdir()}
    assert store.recover_status(folder)["status"] == "completed"
    assert store.recover_status(tmp_path / "never-ran") == {"status": "pending"}
    assert {p: p.read_bytes() for p in folder.iterdir()} == before and capsys.readouterr().err == ""


def test_set_aside_never_overwrites(tmp_path):
    first = tmp_path / "status.json"
    first.write_text("1")
    moved = store.set_aside(first)
    first.write_text("2")
    second = store.set_aside(first)
    assert moved != second and moved.read_text() == "1" and second.read_text() == "2"


def test_run_redoes_a_cell_whose_status_is_corrupt(tmp_path):
    """`run` moves the unreadable status.json aside, warns once and runs the cell (wired in bench.lifecycle)."""
    suite = write_suite(tmp_path / "suite.yaml")
    args = run_args(suite, tmp_path, *ONE_CELL, "--no-tracking")
    cell_id = first_cell_id(suite, tmp_path)
    folder = store.cell_dir(tmp_path / "runs", cell_id)
    store.write_json(folder / "status.json", {"status": "completed"})
    truncate(folder / "status.json")
    result = run_main(args, cwd=tmp_path)
    assert result.code == 0, result.err
    assert "Traceback" not in result.err and "sqvae-bench: warning:" in result.err and "status.json" in result.err
    assert store.read_status(folder)["status"] == "completed"
    assert len(list(folder.glob("status.json.corrupt-*"))) == 1


# -- 8. stale temporary files ----------------------------------------------------------------------
def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_clean_stale_tmp_removes_only_files_of_dead_processes(tmp_path):
    dead = dead_pid()
    stale = [atomic_tmp_path(tmp_path / "cells" / "a" / "status.json", dead), atomic_tmp_path(tmp_path / "x.pt", dead)]
    live = atomic_tmp_path(tmp_path / "cells" / "b" / "metrics.json")  # this process: may still be renamed
    others = [tmp_path / ".notes.tmp", tmp_path / "cells" / "a" / "status.json", tmp_path / ".lock"]
    for path in stale + [live] + others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert clean_stale_tmp(tmp_path) == sorted(stale)
    assert not any(p.exists() for p in stale) and live.exists() and all(p.exists() for p in others)
    assert clean_stale_tmp(tmp_path) == [] and clean_stale_tmp(tmp_path / "missing") == []


def test_store_exposes_the_cleaner():
    assert store.clean_stale_tmp is clean_stale_tmp


# -- 9. vMF: no warning flood when kappa leaves the range of ive -------------------------------------
@pytest.mark.parametrize("kappa", [0.0, 1e-320, 1e300, float("inf")])
def test_log_ive_raises_no_runtime_warning(kappa):
    k = torch.tensor([kappa, 1.0], dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = vmf_log_normaliser(k, 64)
        value.sum().backward()
        log_ive(0.0, k.detach())
    assert torch.isfinite(value[1]) and torch.isfinite(k.grad[1])  # an ordinary kappa is unaffected
