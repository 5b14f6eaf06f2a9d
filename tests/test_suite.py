"""Tests of bench.suite: loading, validation, includes, override precedence and the grid.

All pure and fast: suites resolve from dataset specs alone, so nothing here loads data or trains.
"""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import pytest

from bench.errors import ConfigError
from bench.metrics import METRICS
from bench.models import MODELS
from bench.suite import SUITE_KEYS, config_hash, expand, load_suite, parse_only, select
from tests.conftest import DELETE, SHAPES_OPTIONS, TINY_MODEL_OPTIONS, TINY_SUITE, cli_env, write_suite

# label maps go through the label network, which downsamples by 8: 32 px, not the 28 of the image suite
TWO_DATASETS = {"datasets": {"shapes-labels": {"options": {**SHAPES_OPTIONS, "size": 32}, "model_options": TINY_MODEL_OPTIONS}}}


def cell_ids(suite) -> list[str]:
    return [cell.cell_id for cell in expand(suite)]


def by_coordinates(suite) -> dict[tuple[str, str, int], object]:
    return {(c.dataset, c.model, c.seed): c for c in expand(suite)}


def load_error(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    return str(info.value)


# -- the grid --------------------------------------------------------------------------------------
def test_grid_is_datasets_x_models_x_seeds_in_dataset_major_order(tmp_path):
    suite = load_suite(write_suite(tmp_path / "s.yaml", TWO_DATASETS))
    cells = expand(suite)
    assert [(c.dataset, c.model, c.seed) for c in cells] == [
        (d, m, s) for d in ("shapes", "shapes-labels") for m in ("vqvae", "sqvae-gauss-1") for s in (0, 1)
    ]
    assert len(set(cell_ids(suite))) == 8
    cell = cells[0]
    assert cell.cell_id.startswith("shapes_vqvae_s0-") and len(cell.cell_id.rsplit("-", 1)[1]) == 10
    assert (cell.config.dataset, cell.config.model, cell.config.seed) == ("shapes", "vqvae", 0)


def test_seeds_default_to_zero(tmp_path):
    suite = load_suite(write_suite(tmp_path / "s.yaml", {"seeds": DELETE}))
    assert suite.seeds == (0,) and [c.seed for c in expand(suite)] == [0, 0]


def test_exclusions_drop_matching_cells(tmp_path):
    exclude = [{"dataset": "shapes-labels", "model": "sqvae-gauss-1"}, {"seed": 1},
               {"model": "vqvae", "dataset": "shapes"}]
    suite = load_suite(write_suite(tmp_path / "s.yaml", {**TWO_DATASETS, "exclude": exclude}))
    assert sorted(by_coordinates(suite)) == [("shapes", "sqvae-gauss-1", 0), ("shapes-labels", "vqvae", 0)]


def test_exclusions_do_not_change_the_ids_of_other_cells(tmp_path):
    full = load_suite(write_suite(tmp_path / "a.yaml", TWO_DATASETS))
    some = load_suite(write_suite(tmp_path / "b.yaml", {**TWO_DATASETS, "exclude": [{"seed": 1}]}))
    assert set(cell_ids(some)) < set(cell_ids(full))


def test_only_selects_cells():
    assert parse_only(None) == {} and parse_only("") == {}
    assert parse_only("dataset=shapes,model=vqvae+sqvae-gauss-1,seed=1") == {
        "dataset": {"shapes"}, "model": {"vqvae", "sqvae-gauss-1"}, "seed": {"1"}}
    assert parse_only("model=vqvae,model=sqvae-gauss-1") == {"model": {"vqvae", "sqvae-gauss-1"}}


@pytest.mark.parametrize("text", ["model", "modle=vqvae", "dataset=shapes,=x"])
def test_only_rejects_bad_selections(text):
    with pytest.raises(ConfigError, match="--only: expected key=value with key in dataset, model, seed"):
        parse_only(text)


def test_select_filters_on_every_key(tmp_path):
    cells = expand(load_suite(write_suite(tmp_path / "s.yaml", TWO_DATASETS)))
    chosen = select(cells, parse_only("dataset=shapes-labels,seed=1"))
    assert [(c.dataset, c.model, c.seed) for c in chosen] == [
        ("shapes-labels", "vqvae", 1), ("shapes-labels", "sqvae-gauss-1", 1)]
    assert select(cells, parse_only("model=vqvae+sqvae-gauss-1")) == cells
    assert select(cells, {}) == cells
    assert select(cells, parse_only("model=vqvae-ema")) == []


# -- cell ids --------------------------------------------------------------------------------------
def test_cell_ids_are_stable_across_loads(tmp_path):
    path = write_suite(tmp_path / "s.yaml", TWO_DATASETS)
    first, second = load_suite(path), load_suite(path)
    assert cell_ids(first) == cell_ids(second)
    # the same settings written in another order and in another file give the same ids
    reordered = {key: TINY_SUITE[key] for key in reversed(list(TINY_SUITE))}
    other = load_suite(write_suite(tmp_path / "other" / "s.yaml", base=reordered))
    assert cell_ids(other) == cell_ids(load_suite(write_suite(tmp_path / "t.yaml")))


def test_cell_id_is_a_hash_of_the_canonical_json_of_the_resolved_config(tmp_path):
    cell = expand(load_suite(write_suite(tmp_path / "s.yaml")))[0]
    canonical = json.dumps(cell.config.to_dict(), sort_keys=True, separators=(",", ":"))
    assert config_hash(cell.config) == hashlib.sha256(canonical.encode()).hexdigest()
    assert cell.cell_id == f"shapes_vqvae_s0-{config_hash(cell.config)[:10]}"


def test_cell_ids_are_the_same_in_another_process(tmp_path):
    path = write_suite(tmp_path / "s.yaml", TWO_DATASETS)
    code = f"from bench.suite import expand, load_suite; print(*[c.cell_id for c in expand(load_suite({str(path)!r}))])"
    env = {**cli_env(), "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=True)
    assert done.stdout.split() == cell_ids(load_suite(path))


@pytest.mark.parametrize("patch, changed", [
    ({"train": {"epochs": 2}}, "all"),
    ({"train": {"lr": 2.0e-3}}, "all"),
    ({"datasets": {"shapes": {"train": {"max_steps": 9}}}}, "all"),
    ({"datasets": {"shapes": {"options": {"n_train": 64}}}}, "all"),
    ({"datasets": {"shapes": {"model_options": {"size_dict": 32}}}}, "all"),
    ({"models": {"vqvae": {"options": {"beta": 0.5}}, "sqvae-gauss-1": {}}}, "vqvae"),
    ({"models": {"vqvae": {}, "sqvae-gauss-1": {"datasets": {"shapes": {"tau0": 2.0}}}}}, "sqvae-gauss-1"),
    ({"fid": True}, "all"),
    ({"miou_absent": "ignore"}, "all"),
], ids=["train.epochs", "train.lr", "dataset train", "dataset option", "dataset model_options", "model option",
        "model-on-dataset option", "fid", "miou_absent"])
def test_cell_id_changes_when_any_resolved_setting_changes(tmp_path, patch, changed):
    before = by_coordinates(load_suite(write_suite(tmp_path / "a.yaml")))
    after = by_coordinates(load_suite(write_suite(tmp_path / "b.yaml", patch)))
    assert before.keys() == after.keys()
    for point, cell in before.items():
        differs = cell.cell_id != after[point].cell_id
        assert differs == (changed in ("all", point[1])), point


def test_setting_an_option_to_its_resolved_value_keeps_the_id(tmp_path):
    before = load_suite(write_suite(tmp_path / "a.yaml"))
    default_beta = {"models": {"vqvae": {"options": {"beta": 0.25}}, "sqvae-gauss-1": {}}}
    after = load_suite(write_suite(tmp_path / "b.yaml", default_beta))
    assert cell_ids(before) == cell_ids(after)


# -- override precedence ---------------------------------------------------------------------------
PRECEDENCE = {
    "name": "precedence",
    "datasets": {"cifar10": {"model_options": {"size_dict": 100, "dim_dict": 100, "num_rb": 3}}, "mnist": {}},
    "models": {
        "vqvae": {"options": {"size_dict": 200, "dim_dict": 200}, "datasets": {"cifar10": {"size_dict": 300}}},
        "sqvae-gauss-1": {},
        "sqvae-vmf": {},
    },
}


def test_override_precedence_on_resolved_options(tmp_path):
    cells = by_coordinates(load_suite(write_suite(tmp_path / "s.yaml", base=PRECEDENCE)))
    options = {(d, m): cell.config.model_options for (d, m, _), cell in cells.items()}
    # models.<m>.datasets.<d> > models.<m>.options > dataset.model_options > model defaults / paper settings
    vq = options["cifar10", "vqvae"]
    assert (vq["size_dict"], vq["dim_dict"], vq["num_rb"]) == (300, 200, 3)
    assert vq["beta"] == 0.25  # the model's default
    assert vq["network"] == "net_32"  # the paper's network for 32 px images
    # the dataset's model_options reach every model on it; the model's own options do not leak
    gauss = options["cifar10", "sqvae-gauss-1"]
    assert (gauss["size_dict"], gauss["dim_dict"], gauss["num_rb"]) == (100, 100, 3)
    assert gauss["log_param_q_init"] == pytest.approx(math.log(20.0))  # paper s_0 of CIFAR10
    assert gauss["tau0"] == 1.0
    # on mnist: models.vqvae.options apply, the cifar10-only override does not
    assert (options["mnist", "vqvae"]["size_dict"], options["mnist", "vqvae"]["dim_dict"]) == (200, 200)
    assert options["mnist", "vqvae"]["num_rb"] == 2 and options["mnist", "vqvae"]["network"] == "net_28"
    assert (options["mnist", "sqvae-gauss-1"]["size_dict"], options["mnist", "sqvae-gauss-1"]["num_rb"]) == (128, 2)
    # a model default beats the paper's per-dataset value where the model does not take it from the paper
    assert options["cifar10", "sqvae-vmf"]["log_param_q_init"] == pytest.approx(math.log(0.05))


def test_paper_settings_apply_without_overrides(tmp_path):
    plain = {"name": "p", "datasets": ["cifar10"], "models": ["vqvae"]}
    suite = load_suite(write_suite(tmp_path / "s.yaml", base=plain))
    opts = expand(suite)[0].config.model_options
    assert {k: opts[k] for k in ("network", "size_dict", "dim_dict", "num_rb")} == {
        "network": "net_32", "size_dict": 512, "dim_dict": 64, "num_rb": 2}


def test_per_dataset_train_overrides(tmp_path):
    base = {**PRECEDENCE, "train": {"epochs": 2, "batch_size": 16},
            "datasets": {"cifar10": {}, "mnist": {"train": {"epochs": 7, "lr": 5.0e-4}}}}
    cells = expand(load_suite(write_suite(tmp_path / "s.yaml", base=base)))
    for cell in cells:
        train = cell.config.train
        assert train.batch_size == 16
        assert (train.epochs, train.lr) == ((7, 5e-4) if cell.dataset == "mnist" else (2, 1e-3))


# -- include ---------------------------------------------------------------------------------------
def test_include_merges_child_over_parent(tmp_path):
    write_suite(tmp_path / "base" / "parent.yaml", {"description": "the parent", "exclude": [{"seed": 1}]})
    child = tmp_path / "child.yaml"
    child.write_text(
        "include: base/parent.yaml\n"
        "name: child\n"
        "models:\n  vqvae: {options: {beta: 0.5}}\n"
        "datasets:\n  shapes: {train: {max_steps: 3}}\n"
        "train: {epochs: 2}\n"
    )
    suite = load_suite(child)
    assert (suite.name, suite.description) == ("child", "the parent")
    assert suite.train == {"epochs": 2, "max_steps": 8, "log_every": 2}
    assert list(suite.models) == ["vqvae", "sqvae-gauss-1"]  # the parent's list, merged per name
    assert suite.models["vqvae"]["options"] == {"beta": 0.5}
    assert suite.datasets["shapes"]["options"] == SHAPES_OPTIONS  # the parent's, next to the child's train
    cells = by_coordinates(suite)
    assert sorted(cells) == [("shapes", "sqvae-gauss-1", 0), ("shapes", "vqvae", 0)]  # the parent's exclusion
    vq = cells["shapes", "vqvae", 0].config
    assert (vq.model_options["beta"], vq.model_options["size_dict"]) == (0.5, 16)
    assert (vq.train.epochs, vq.train.max_steps) == (2, 3)


def test_include_chain_and_list_replacement(tmp_path):
    write_suite(tmp_path / "a.yaml", {"seeds": [0, 1, 2], "metrics": ["mse", "perplexity"]})
    (tmp_path / "b.yaml").write_text("include: a.yaml\nname: b\nseeds: [5]\n")
    (tmp_path / "c.yaml").write_text("include: b.yaml\nname: c\nmetrics: [usage]\n")
    suite = load_suite(tmp_path / "c.yaml")
    assert (suite.name, suite.seeds, suite.metrics) == ("c", (5,), ("usage",))  # lists replace, not concatenate


@pytest.mark.parametrize("files", [
    {"a.yaml": "include: a.yaml\n"},
    {"a.yaml": "include: b.yaml\nname: a\n", "b.yaml": "include: sub/../a.yaml\n"},
], ids=["self", "two files"])
def test_include_cycle_is_a_config_error(tmp_path, files):
    (tmp_path / "sub").mkdir()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    message = load_error(tmp_path / "a.yaml")
    assert "include cycle" in message and str(tmp_path / "a.yaml") in message


def test_missing_include_names_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("include: nowhere.yaml\nname: a\n")
    message = load_error(tmp_path / "a.yaml")
    assert str(tmp_path / "nowhere.yaml") in message and "not found" in message


# -- validation ------------------------------------------------------------------------------------
BAD_SUITES = [
    # (id, patch of the tiny suite, key path named, further fragments of the message)
    ("unknown top-level key", {"seed": [0]}, "seed",
     ["unknown key", "did you mean 'seeds'?", "valid: " + ", ".join(SUITE_KEYS)]),
    ("unknown model", {"models": ["vqvae", "vqvea"]}, "models.vqvea",
     ["unknown model", "did you mean 'vqvae'?", "sqvae-gauss-1"]),
    ("unknown dataset", {"datasets": {"shapez": {}}}, "datasets.shapez",
     ["unknown dataset", "did you mean 'shapes'?", "cifar10"]),
    ("misspelt dataset key", {"datasets": {"shapes": {"optons": {}}}}, "datasets.shapes.optons",
     ["unknown key", "did you mean 'options'?", "valid: options, model_options, train"]),
    ("misspelt model key", {"models": {"vqvae": {"option": {}}}}, "models.vqvae.option", ["did you mean 'options'?"]),
    ("misspelt train key", {"train": {"epocs": 3}}, "train.epocs", ["did you mean 'epochs'?", "max_steps"]),
    ("misspelt dataset train key", {"datasets": {"shapes": {"train": {"epocs": 3}}}}, "datasets.shapes.train.epocs",
     ["did you mean 'epochs'?"]),
    ("misspelt exclude key", {"exclude": [{"models": "vqvae"}]}, "exclude[0].models", ["did you mean 'model'?"]),
    ("misspelt exclude model", {"exclude": [{"model": "vqvea"}]}, "exclude[0].model", ["did you mean 'vqvae'?"]),
    ("quoted exclude seed", {"exclude": [{"seed": "1"}]}, "exclude[0].seed", ["expected an integer"]),
    ("misspelt model-on-dataset name", {"models": {"vqvae": {"datasets": {"shapse": {"beta": 0.5}}}}},
     "models.vqvae.datasets.shapse", ["unknown dataset", "did you mean 'shapes'?"]),
    ("seeds as text", {"seeds": "0"}, "seeds", ["expected a list of integers", "'0'"]),
    ("a seed as text", {"seeds": [0, "1"]}, "seeds[1]", ["expected an integer"]),
    ("epochs as text", {"train": {"epochs": "three"}}, "train.epochs", ["must be an integer >= 1", "'three'"]),
    ("epochs below one", {"train": {"epochs": 0}}, "train.epochs", ["must be an integer >= 1"]),
    ("fid as text", {"fid": "yes"}, "fid", ["expected true or false", "'yes'"]),
    ("unknown model option", {"datasets": {"shapes": {"model_options": {"sise_dict": 8}}}},
     "datasets.shapes / models.vqvae",
     ["model 'vqvae' has no option 'sise_dict'", "did you mean 'size_dict'?", "valid: network, size_dict"]),
    ("unknown model option of one model", {"models": {"sqvae-gauss-1": {"options": {"beta": 0.5}}}},
     "datasets.shapes / models.sqvae-gauss-1", ["model 'sqvae-gauss-1' has no option 'beta'", "tau0"]),
    ("unknown dataset option", {"datasets": {"shapes": {"options": {"sise": 28}}}}, "datasets.shapes",
     ["dataset 'shapes' has no option 'sise'", "did you mean 'size'?"]),
    ("unknown metric", {"metrics": ["mse", "perplexty"]}, "metrics", ["did you mean 'perplexity'?"]),
    ("bad miou convention", {"miou_absent": "skip"}, "miou_absent", ["zero, ignore"]),
    ("no name", {"name": DELETE}, "name", ["required key missing"]),
    ("no models", {"models": DELETE}, "models", ["required key missing"]),
    ("empty models", {"models": []}, "models", ["needs at least one model"]),
    ("models as text", {"models": "vqvae"}, "models", ["a list of model names or a mapping"]),
]


@pytest.mark.parametrize("patch, key_path, fragments", [case[1:] for case in BAD_SUITES],
                         ids=[case[0] for case in BAD_SUITES])
def test_invalid_suites_fail_naming_file_and_key(tmp_path, patch, key_path, fragments):
    path = write_suite(tmp_path / "bad.yaml", patch)
    message = load_error(path)
    assert message.startswith(f"{path}: ")
    assert f": {key_path}" in message
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


def test_unquoted_1e_minus_3_is_text_in_yaml_and_the_message_says_so(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: lr\ndatasets: [shapes]\nmodels: [vqvae]\ntrain:\n  lr: 1e-3\n")
    message = load_error(path)
    assert str(path) in message and "train.lr: must be a number; got '1e-3'" in message
    assert "YAML reads 1e-3 as text: write 1.0e-3" in message
    path.write_text("name: lr\ndatasets: [shapes]\nmodels: [vqvae]\ntrain:\n  lr: 1.0e-3\n")
    assert expand(load_suite(path))[0].config.train.lr == 1e-3


def test_missing_file(tmp_path):
    message = load_error(tmp_path / "nope.yaml")
    assert message.startswith(f"{tmp_path / 'nope.yaml'}: suite file not found")
    assert "smoke" in message and "paper" in message  # the shipped suites


@pytest.mark.parametrize("text, fragment", [
    ("name: x\nmodels: [vqvae\n", "not valid YAML"),
    ("- just\n- a list\n", "(top level): expected a mapping"),
    ("name: x\n\tmodels: [vqvae]\n", "not valid YAML"),
], ids=["unclosed bracket", "not a mapping", "tab"])
def test_invalid_yaml(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    message = load_error(path)
    assert message.startswith(str(path)) and fragment in message


def test_an_empty_file_says_what_is_missing(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_error(path) == f"{path}: name: required key missing"


def test_mapping_and_list_forms_are_the_same_suite(tmp_path):
    listed = load_suite(write_suite(tmp_path / "a.yaml"))
    mapped = load_suite(write_suite(tmp_path / "b.yaml", {"models": {"vqvae": None, "sqvae-gauss-1": {}}}))
    assert cell_ids(listed) == cell_ids(mapped)


# -- the shipped suites ----------------------------------------------------------------------------
@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """An empty data root: resolving a suite must not read (or download) anything into it."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("SQVAE_BENCH_DATA", str(root))
    yield
    assert not any(root.iterdir())


def test_smoke_suite_loads_by_name(no_data):
    suite = load_suite("smoke")
    cells = expand(suite)
    assert suite.name == "smoke" and suite.source.name == "smoke.yaml"
    assert len(cells) == 20 and len(set(c.cell_id for c in cells)) == 20
    models = {d: {c.model for c in cells if c.dataset == d} for d in ("shapes", "shapes-labels")}
    # sqvae-minimal is compared on its own network, in the minimal-sqvae suites
    assert models["shapes"] == set(MODELS.names()) - {"sqvae-minimal"}
    assert models["shapes-labels"] == {"sqvae-vmf", "vqvae"}
    assert all(name in METRICS for name in suite.metrics)
    labels = next(c for c in cells if c.dataset == "shapes-labels")
    assert labels.config.model_options["network"] == "label"


def test_paper_suite_resolves_to_the_spec_settings(no_data):
    suite = load_suite("paper")
    cells = expand(suite)
    assert suite.seeds == (0, 1, 2) and suite.fid is True
    assert len(cells) == 69 and len(set(c.cell_id for c in cells)) == 69
    models = {d: sorted({c.model for c in cells if c.dataset == d}) for d in suite.datasets}
    vq = ["vqvae", "vqvae-ema", "vqvae-reset"]
    assert models["mnist"] == models["fashion-mnist"] == models["cifar10"] == sorted(["sqvae-gauss-1", *vq])
    assert models["celeba"] == sorted([f"sqvae-gauss-{i}" for i in (1, 2, 3, 4)] + vq)
    assert models["celebamask-hq"] == sorted(["sqvae-vmf", *vq])
    expected = {  # SPEC §3: K, d_b, num_rb, network, epochs
        "mnist": (128, 64, 2, "net_28", 100),
        "fashion-mnist": (256, 64, 2, "net_28", 100),
        "cifar10": (512, 64, 2, "net_32", 100),
        "celeba": (512, 64, 6, "net_64", 70),
        "celebamask-hq": (64, 65, 2, "label", 70),
    }
    for cell in cells:
        opts, train = cell.config.model_options, cell.config.train
        got = (opts["size_dict"], opts["dim_dict"], opts["num_rb"], opts["network"], train.epochs)
        assert got == expected[cell.dataset], cell.cell_id
        assert (train.batch_size, train.lr, train.precision, train.max_steps) == (32, 1e-3, "fp32", 0)
    s0 = {(c.dataset, c.model): c.config.model_options.get("log_param_q_init") for c in cells}
    assert s0["cifar10", "sqvae-gauss-1"] == pytest.approx(math.log(20.0))
    assert s0["mnist", "sqvae-gauss-1"] == pytest.approx(math.log(10.0))
    assert s0["celebamask-hq", "sqvae-vmf"] == pytest.approx(math.log(0.05))
    assert {c.config.model_options["beta"] for c in cells if c.model.startswith("vqvae")} == {0.25}


def test_shipped_suites_load_by_path_and_by_name_alike():
    from bench.suite import SUITES_DIR

    for name in ("smoke", "paper"):
        assert cell_ids(load_suite(name)) == cell_ids(load_suite(SUITES_DIR / f"{name}.yaml"))


def test_suites_are_frozen(tmp_path):
    cell = expand(load_suite(write_suite(tmp_path / "s.yaml")))[0]
    with pytest.raises(AttributeError):
        cell.config.train.epochs = 5  # type: ignore[misc]


def test_a_model_that_cannot_take_the_data_fails_at_load(tmp_path):
    path = write_suite(tmp_path / "s.yaml", {"datasets": {"shapes-labels": {"options": {**SHAPES_OPTIONS, "size": 28}}}})
    with pytest.raises(ConfigError, match="multiple of 8; got 28") as caught:
        load_suite(path)
    assert "shapes-labels" in str(caught.value)
