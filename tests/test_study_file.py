"""Tests of bench.study (study files) and of the per-model train overrides of suites it relies on.

All pure and fast: studies resolve from dataset specs and meta-device models, so nothing here loads
data or trains (the Optuna runtime is tested with bench.tune).
"""
from __future__ import annotations

from dataclasses import replace

import optuna
import pytest
import torch
import yaml

from bench.data import dataset_spec
from bench.errors import ConfigError
from bench.evaluate import evaluate
from bench.metrics import METRICS
from bench.models import build_model
from bench.study import (
    MULTI_OBJECTIVE_RULE,
    STUDIES_DIR,
    VALIDATION_METRICS,
    Param,
    describe,
    final_suite,
    load_study,
    make_pruner,
    make_sampler,
    pairs,
    shipped_studies,
    trial_config,
)
from bench.suite import expand, load_suite, resolve_cell_config
from tests.conftest import DELETE, SHAPES_OPTIONS, TINY_MODEL_OPTIONS, run_main, write_suite

TINY_STUDY = {
    "name": "tiny-study",
    "include": "tiny.yaml",  # conftest's tiny suite: shapes 28 px, vqvae and sqvae-gauss-1, max_steps 8
    "search_space": {
        "all": {"train.lr": {"type": "float", "low": 3.0e-4, "high": 3.0e-3, "log": True}},
        "vqvae": {"beta": {"type": "float", "low": 0.1, "high": 1.0}},
        "sqvae-gauss-1": {"log_param_q_init": {"type": "float", "low": 0.0, "high": 4.0}},
    },
    "objective": "mse",
    "budget": {"trials": 3, "epochs": 2, "seed": 5},
    "sampler": {"name": "tpe", "seed": 1},
    "pruner": {"name": "median", "n_startup_trials": 1},
    "final": {"seeds": [0, 1], "train": {"epochs": 3}},
}
BEST = {("shapes", "vqvae"): {"train.lr": 0.002, "beta": 0.5},
        ("shapes", "sqvae-gauss-1"): {"train.lr": 0.0005, "log_param_q_init": 1.5}}


def write_study(tmp_path, patch: dict | None = None, name: str = "study.yaml"):
    write_suite(tmp_path / "tiny.yaml", {"description": "the tiny suite"})
    return write_suite(tmp_path / name, patch, base=TINY_STUDY)


@pytest.fixture
def tiny_study(tmp_path):
    return load_study(write_study(tmp_path))


def load_error(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_study(path)
    return str(info.value)


# -- shipped studies -------------------------------------------------------------------------------
def test_shipped_studies_load_by_name_and_by_path():
    assert shipped_studies() == ["paper", "smoke"]
    for name in shipped_studies():
        study = load_study(name)
        assert study.name == name and study.source == STUDIES_DIR / f"{name}.yaml"
        assert load_study(STUDIES_DIR / f"{name}.yaml") == study


def test_smoke_study_is_small_and_fair():
    study = load_study("smoke")
    assert pairs(study) == [("shapes", m) for m in ("sqvae-gauss-1", "sqvae-gauss-4", "vqvae", "vqvae-ema")]
    assert study.suite.datasets["shapes"]["options"] == {"size": 32, "n_train": 1024, "n_val": 256, "n_test": 256}
    assert 4 <= study.trials <= 6 and study.budget_train == {"epochs": 2, "max_steps": 0}
    assert study.objective == ("mse",) and study.pruner["name"] == "median"
    assert study.final_seeds == (0, 1)
    assert all(len(params) == 2 and params[0].name == "train.lr" for params in study.space.values())
    configs = [trial_config(study, d, m, {}) for d, m in pairs(study)]
    assert {(c.train.epochs, c.train.max_steps, c.train.batch_size, c.seed) for c in configs} == {(2, 0, 32, 0)}


def test_paper_study_tunes_the_image_experiments(tmp_path):
    study = load_study("paper")
    assert study.suite.seeds == (0, 1, 2) and study.final_seeds == (0, 1, 2) and study.final_train == {}
    assert {d for d, _ in pairs(study)} == {"mnist", "fashion-mnist", "cifar10", "celeba"}
    assert len(pairs(study)) == 19 and study.trials == 30 and study.budget_train["epochs"] == 20
    assert study.pruner["name"] == "hyperband"
    names = {m: [p.name for p in params] for m, params in study.space.items()}
    assert all(params[0] == "train.lr" for params in names.values())
    assert names["vqvae"] == ["train.lr", "beta"] and names["vqvae-ema"] == ["train.lr", "beta", "gamma"]
    assert names["vqvae-reset"] == ["train.lr", "beta", "gamma", "threshold"]
    for variant in (1, 2, 3, 4):
        assert names[f"sqvae-gauss-{variant}"] == ["train.lr", "log_param_q_init", "tau_decay"]
    lr = study.space["vqvae"][0]
    assert lr.log and lr.low < 1e-3 < lr.high
    best = {("celeba", "sqvae-gauss-2"): {"train.lr": 5.0e-4, "log_param_q_init": 2.0, "tau_decay": 2.0e-5}}
    tuned = load_suite_from(final_suite(study, best), tmp_path / "tuned.yaml")
    (cell, *_) = cells = expand(tuned)
    assert [(c.dataset, c.model, c.seed) for c in cells] == [("celeba", "sqvae-gauss-2", s) for s in (0, 1, 2)]
    assert (cell.config.train.epochs, cell.config.train.lr, cell.config.model_options["tau_decay"]) == (70, 5.0e-4, 2.0e-5)
    assert cell.config.fid and cell.config.train.precision == "fp32"


def load_suite_from(data: dict, path):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        return load_suite(path)
    finally:
        path.unlink()


# -- what a study holds ----------------------------------------------------------------------------
def test_a_study_inherits_its_suite_and_merges_the_search_space(tiny_study):
    study = tiny_study
    assert pairs(study) == [("shapes", "vqvae"), ("shapes", "sqvae-gauss-1")]
    assert study.suite.seeds == (0, 1) and study.suite.train["max_steps"] == 8
    assert [p.name for p in study.space["vqvae"]] == ["train.lr", "beta"]
    assert [p.name for p in study.space["sqvae-gauss-1"]] == ["train.lr", "log_param_q_init"]
    assert study.space["vqvae"][0] == Param("train.lr", "float", 3.0e-4, 3.0e-3, None, True)
    assert (study.objective, study.directions) == (("mse",), ("minimize",))
    assert (study.trials, study.budget_train, study.trial_seed) == (3, {"epochs": 2, "max_steps": 0}, 5)
    assert study.sampler == {"name": "tpe", "seed": 1} and study.pruner == {"name": "median", "n_startup_trials": 1}
    assert study.final_seeds == (0, 1) and study.final_train == {"epochs": 3, "max_steps": 0}
    assert study.description == ""  # not the suite's


def test_a_model_entry_overrides_the_all_entry(tmp_path):
    lr = {"type": "float", "low": 1.0e-4, "high": 1.0e-3}
    study = load_study(write_study(tmp_path, {"search_space": {"vqvae": {"train.lr": lr}}}))
    assert study.space["vqvae"][0] == Param("train.lr", "float", 1.0e-4, 1.0e-3)
    assert study.space["sqvae-gauss-1"][0].high == 3.0e-3


def test_defaults_of_seed_sampler_pruner_and_final(tmp_path):
    patch = {"budget": {"seed": DELETE}, "sampler": DELETE, "pruner": DELETE, "final": DELETE}
    study = load_study(write_study(tmp_path, patch))
    assert study.trial_seed == 0 and study.sampler == {"name": "tpe", "seed": 0}
    assert study.pruner == {"name": "median"} and study.final_seeds == (0, 1) and study.final_train == {}


def test_several_objectives_take_their_directions_and_default_to_no_pruner(tmp_path):
    study = load_study(write_study(tmp_path, {"objective": ["mse", "perplexity"], "pruner": DELETE}))
    assert study.directions == ("minimize", "maximize") and study.pruner == {"name": "none"}
    assert MULTI_OBJECTIVE_RULE in describe(study)


def test_label_objectives_on_label_maps(tmp_path):
    labels = {"shapes-labels": {"options": {**SHAPES_OPTIONS, "size": 32}, "model_options": TINY_MODEL_OPTIONS}}
    patch = {"datasets": labels, "exclude": [{"dataset": "shapes"}], "objective": ["miou", "perplexity"],
             "pruner": "none"}
    study = load_study(write_study(tmp_path, patch))
    assert pairs(study)[0] == ("shapes-labels", "vqvae") and study.directions == ("maximize", "maximize")


def test_the_validation_metrics_are_what_evaluate_returns():
    """VALIDATION_METRICS mirrors bench/evaluate.py: evaluate a tiny model of each kind and compare."""
    for name, size, data in (("shapes", 28, torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)),
                             ("shapes-labels", 32, torch.randint(0, 3, (4, 32, 32), dtype=torch.uint8))):
        spec = dataset_spec(name, size=size)
        torch.manual_seed(0)
        model = build_model("vqvae", spec, TINY_MODEL_OPTIONS)
        returned = set(evaluate(model, data, batch_size=2).metrics)
        assert set(VALIDATION_METRICS[spec.kind]) == {m for m in returned if m in METRICS} - {"loss"}, name


def test_describe_shows_spaces_budget_sampler_pruner_and_final(tiny_study):
    text = describe(tiny_study)
    lines = text.splitlines()
    assert lines[0] == f"study tiny-study ({tiny_study.source}): 2 (dataset, model) pairs x 3 trials = 6 trials"
    for fragment in ("objective: mse (minimize) on validation", "budget: 3 finished trials per (dataset, model)",
                     "each 2 epochs at seed 5", "sampler: tpe (seed=1)", "pruner: median (n_startup_trials=1)",
                     "final: seeds 0, 1; train epochs=3, max_steps=0, log_every=2"):
        assert fragment in text, fragment
    at = lines.index("shapes / vqvae (batch 32):")
    assert lines[at + 1].split() == ["train.lr", "float", "[0.0003,", "0.003]", "log", "(default", "0.001)"]
    assert lines[at + 2].split() == ["beta", "float", "[0.1,", "1.0]", "(default", "0.25)"]
    assert "shapes / sqvae-gauss-1 (batch 32):" in lines


# -- trials ----------------------------------------------------------------------------------------
def test_trial_config_applies_the_budget_train_params_and_model_params(tiny_study):
    config = trial_config(tiny_study, "shapes", "vqvae", BEST[("shapes", "vqvae")])
    base = resolve_cell_config(tiny_study.suite, "shapes", "vqvae", 5)
    assert config.seed == 5
    assert config.train == replace(base.train, epochs=2, max_steps=0, lr=0.002)
    assert config.model_options == {**base.model_options, "beta": 0.5}
    assert config.model_options["size_dict"] == 16  # the suite's settings stay
    assert (config.dataset, config.data_options) == ("shapes", SHAPES_OPTIONS)
    other = trial_config(tiny_study, "shapes", "sqvae-gauss-1", {})
    assert other.train.lr == 1e-3 and "beta" not in other.model_options


def test_a_max_steps_budget(tmp_path):
    study = load_study(write_study(tmp_path, {"budget": {"epochs": DELETE, "max_steps": 20}}))
    config = trial_config(study, "shapes", "vqvae", {})
    assert study.budget_train == {"max_steps": 20} and config.train.max_steps == 20


@pytest.mark.parametrize("params, fragment", [({"bta": 0.5}, "model 'vqvae' has no option 'bta'"),
                                              ({"train.lr": -1.0}, "train.lr must be > 0"),
                                              ({"train.lrr": 0.1}, "lrr")])
def test_trial_config_rejects_bad_params(tiny_study, params, fragment):
    with pytest.raises(ConfigError) as info:
        trial_config(tiny_study, "shapes", "vqvae", params)
    assert str(info.value).startswith(f"{tiny_study.source}: trial of model 'vqvae' on dataset 'shapes'")
    assert fragment in str(info.value)


# -- the final stage -------------------------------------------------------------------------------
def test_final_suite_round_trips_through_the_suite_loader(tiny_study, tmp_path):
    data = final_suite(tiny_study, BEST)
    assert data["name"] == "tiny-study-tuned" and data["seeds"] == [0, 1]
    assert data["models"]["vqvae"]["datasets"]["shapes"] == {"beta": 0.5, "train": {"lr": 0.002}}
    suite = load_suite_from(data, tmp_path / "tuned.yaml")
    cells = expand(suite)
    assert sorted((c.dataset, c.model, c.seed) for c in cells) == sorted(
        (d, m, s) for d, m in BEST for s in (0, 1))
    for cell in cells:
        trial = trial_config(tiny_study, cell.dataset, cell.model, BEST[(cell.dataset, cell.model)])
        final = replace(trial, seed=cell.seed, train=replace(trial.train, epochs=3, max_steps=0))
        assert cell.config == final


def test_final_suite_excludes_pairs_without_a_best_trial_and_keeps_the_rest(tmp_path):
    patch = {"seeds": [0, 1, 2], "exclude": [{"seed": 2}], "final": {"seeds": [0, 1, 2]},
             "datasets": {"shapes": {"train": {"lr_patience": 7}}}, "metrics": ["mse", "perplexity"]}
    study = load_study(write_study(tmp_path, patch))
    best = {("shapes", "vqvae"): BEST[("shapes", "vqvae")]}
    suite = load_suite_from(final_suite(study, best), tmp_path / "tuned.yaml")
    cells = expand(suite)
    assert [(c.model, c.seed) for c in cells] == [("vqvae", 0), ("vqvae", 1)]  # the seed-2 rule still holds
    assert all(c.config.train.lr_patience == 7 and c.config.train.epochs == 3 for c in cells)
    assert suite.metrics == ("mse", "perplexity") and suite.fid is False


@pytest.mark.parametrize("best, fragment", [({("shapes", "vqvae-ema"): {}}, "is not a .dataset, model. of study"),
                                            ({("shapes", "vqvae"): {"gamma": 0.9}}, "not in search_space")])
def test_final_suite_rejects_what_the_study_does_not_search(tiny_study, best, fragment):
    with pytest.raises(ConfigError, match=fragment):
        final_suite(tiny_study, best)


# -- parameters, samplers and pruners --------------------------------------------------------------
def test_grid_values():
    assert Param("k", "int", 8, 32, 8).grid_values() == [8, 16, 24, 32]
    assert Param("k", "int", 1, 3).grid_values() == [1, 2, 3]
    assert Param("b", "float", 0.1, 0.5, 0.1).grid_values() == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert Param("c", "categorical", choices=("a", "b")).grid_values() == ["a", "b"]
    with pytest.raises(ConfigError, match="no finite grid"):
        Param("lr", "float", 0.1, 0.5).grid_values()


def test_suggest_stays_in_range_and_the_seeded_sampler_repeats_itself(tiny_study):
    def suggestions(study):
        ostudy = optuna.create_study(sampler=make_sampler(study))
        values = []
        for _ in range(4):
            trial = ostudy.ask()
            values.append([p.suggest(trial) for p in study.space["vqvae"]])
            ostudy.tell(trial, 1.0)
        return values

    first = suggestions(tiny_study)
    assert first == suggestions(tiny_study)
    assert all(3e-4 <= lr <= 3e-3 and 0.1 <= beta <= 1.0 for lr, beta in first)
    assert isinstance(make_pruner(tiny_study), optuna.pruners.MedianPruner)


def test_grid_sampler_and_its_trial_limit(tmp_path):
    space = {"all": {"train.lr": {"type": "categorical", "choices": [1.0e-3, 2.0e-3], "low": DELETE, "high": DELETE,
                                  "log": DELETE}},
             "vqvae": {"beta": {"low": 0.25, "high": 0.5, "step": 0.25}},
             "sqvae-gauss-1": {"log_param_q_init": DELETE, "size_dict": {"type": "int", "low": 16, "high": 64, "step": 16}}}
    patch = {"search_space": space, "sampler": {"name": "grid"}, "budget": {"trials": 4}}
    study = load_study(write_study(tmp_path, patch))
    assert study.space["sqvae-gauss-1"][1].grid_values() == [16, 32, 48, 64]
    sampler = make_sampler(study, study.space["vqvae"])
    assert isinstance(sampler, optuna.samplers.GridSampler)
    seen = set()
    optuna.create_study(sampler=sampler).optimize(  # the grid sampler stops the study once it is exhausted
        lambda trial: seen.add(tuple(p.suggest(trial) for p in study.space["vqvae"])) or 1.0, n_trials=10)
    assert seen == {(lr, beta) for lr in (1.0e-3, 2.0e-3) for beta in (0.25, 0.5)}
    too_many = write_study(tmp_path, {**patch, "budget": {"trials": 5}}, name="more.yaml")
    assert "5 trials exceed the grid of model 'vqvae' (4 points)" in load_error(too_many)


@pytest.mark.parametrize("patch, kind", [({"sampler": {"name": "random"}}, optuna.samplers.RandomSampler),
                                         ({"pruner": {"name": "hyperband", "max_resource": "auto",
                                                      "n_startup_trials": DELETE}},
                                          optuna.pruners.HyperbandPruner),
                                         ({"pruner": "none"}, optuna.pruners.NopPruner)])
def test_other_samplers_and_pruners(tmp_path, patch, kind):
    study = load_study(write_study(tmp_path, patch))
    made = make_sampler(study) if "sampler" in patch else make_pruner(study)
    assert isinstance(made, kind)


# -- bad study files -------------------------------------------------------------------------------
FLOAT = {"type": "float", "low": 0.1, "high": 1.0}
BAD_STUDIES = [
    # (id, patch of the tiny study, key path named, further fragments of the message)
    ("unknown parameter for a model", {"search_space": {"all": {"beta": FLOAT}}}, "search_space.all.beta",
     ["model 'sqvae-gauss-1' has no option 'beta'", "valid: network, size_dict"]),
    ("misspelt parameter", {"search_space": {"vqvae": {"bta": FLOAT}}}, "search_space.vqvae.bta",
     ["model 'vqvae' has no option 'bta'", "did you mean 'beta'?"]),
    ("misspelt train parameter", {"search_space": {"all": {"train.lrr": FLOAT}}}, "search_space.all.train.lrr",
     ["unknown train setting 'lrr'", "did you mean 'lr'?"]),
    ("misspelt top-level key", {"serch_space": {}}, "serch_space", ["unknown key", "did you mean 'search_space'?"]),
    ("misspelt budget key", {"budget": {"trails": 3}}, "budget.trails", ["did you mean 'trials'?"]),
    ("low above high", {"search_space": {"vqvae": {"beta": {"low": 2.0, "high": 1.0}}}}, "search_space.vqvae.beta",
     ["low (2.0) is above high (1.0)"]),
    ("log with low 0", {"search_space": {"all": {"train.lr": {"low": 0.0}}}}, "search_space.all.train.lr.log",
     ["a log range needs low > 0"]),
    ("step not positive", {"search_space": {"vqvae": {"beta": {"step": 0.0}}}}, "search_space.vqvae.beta.step",
     ["must be positive"]),
    ("step with log", {"search_space": {"all": {"train.lr": {"step": 1.0e-4}}}}, "search_space.all.train.lr.step",
     ["a log range takes no step"]),
    ("unknown type", {"search_space": {"vqvae": {"beta": {"type": "flaot"}}}}, "search_space.vqvae.beta.type",
     ["unknown type 'flaot'", "did you mean 'float'?"]),
    ("categorical without choices", {"search_space": {"vqvae": {"size_dict": {"type": "categorical"}}}},
     "search_space.vqvae.size_dict.choices", ["expected a non-empty list"]),
    ("int bounds not integers", {"search_space": {"vqvae": {"size_dict": {"type": "int", "low": 8.5, "high": 16}}}},
     "search_space.vqvae.size_dict.low", ["expected an integer"]),
    ("a value the model rejects", {"search_space": {"vqvae": {"beta": {"low": -1.0}}}}, "search_space.vqvae.beta",
     ["-1.0 fails for model 'vqvae' on dataset 'shapes'", "beta must be >= 0"]),
    ("a choice the model rejects", {"search_space": {"vqvae": {"size_dict": {"type": "categorical", "choices": [1, 8]}}}},
     "search_space.vqvae.size_dict", ["1 fails for model 'vqvae'", "size_dict (codebook size K) must be >= 2"]),
    ("a train value TrainConfig rejects", {"search_space": {"all": {"train.lr_factor": {**FLOAT, "high": 1.5}}}},
     "search_space.all.train.lr_factor", ["1.5 fails", "train.lr_factor must be in (0, 1)"]),
    ("a model outside the grid", {"search_space": {"vqvae-ema": {"gamma": FLOAT}}}, "search_space.vqvae-ema",
     ["model 'vqvae-ema' is not in the study's grid", "valid: all, vqvae, sqvae-gauss-1"]),
    ("a model without parameters", {"search_space": {"all": DELETE, "sqvae-gauss-1": DELETE}}, "search_space",
     ["model 'sqvae-gauss-1' has no parameter to search"]),
    ("test-only metric", {"objective": "fid"}, "objective", ["'fid' cannot be an objective", "test split"]),
    ("loss as objective", {"objective": ["mse", "loss"]}, "objective[1]", ["not comparable across models"]),
    ("label metric on images", {"objective": "miou"}, "objective",
     ["'miou' is not a validation metric of dataset 'shapes' (image)", "valid there: mse"]),
    ("unknown metric", {"objective": ["mse", "perplexty"]}, "objective[1]", ["did you mean 'perplexity'?"]),
    ("unknown sampler", {"sampler": {"name": "tpee"}}, "sampler.name",
     ["unknown sampler 'tpee'", "did you mean 'tpe'?", "valid: tpe, random, grid"]),
    ("unknown sampler option", {"sampler": {"n_startup": 2}}, "sampler.n_startup", ["did you mean 'n_startup_trials'?"]),
    ("unknown pruner", {"pruner": {"name": "medain"}}, "pruner.name",
     ["unknown pruner 'medain'", "did you mean 'median'?", "valid: median, hyperband, none"]),
    ("bad pruner option", {"pruner": {"n_startup_trials": -1}}, "pruner.n_startup_trials", ["must be an integer >= 0"]),
    ("group without multivariate", {"sampler": {"group": True}}, "sampler.group", ["needs multivariate: true"]),
    ("hyperband beyond the budget", {"pruner": {"name": "hyperband", "n_startup_trials": DELETE, "max_resource": 5}},
     "pruner.max_resource", ["train 2 epochs", "at most 2"]),
    ("a budget under a model", {"models": {"vqvae": {"budget": {"trials": 10}}}}, "models.vqvae.budget",
     ["a study gives every model the same budget"]),
    ("per-model epochs", {"models": {"vqvae": {"datasets": {"shapes": {"train": {"epochs": 5}}}}}},
     "models.vqvae.datasets.shapes.train.epochs", ["a study gives every model the same budget"]),
    ("per-model batch size", {"models": {"sqvae-gauss-1": {"datasets": {"shapes": {"train": {"batch_size": 8}}}}}},
     "models.sqvae-gauss-1.datasets.shapes.train.batch_size", ["a study gives every model the same budget"]),
    ("train.epochs in the space", {"search_space": {"all": {"train.epochs": {"type": "int", "low": 1, "high": 3}}}},
     "search_space.all.train.epochs", ["cannot be searched", "a study gives every model the same budget"]),
    ("pruning with two objectives", {"objective": ["mse", "perplexity"]}, "pruner.name",
     ["Optuna cannot prune trials with several objectives"]),
    ("no budget", {"budget": DELETE}, "budget", ["required key missing"]),
    ("no name (the suite's is not inherited)", {"name": DELETE}, "name", ["required key missing"]),
    ("epochs and max_steps", {"budget": {"max_steps": 10}}, "budget",
     ["give exactly one of epochs, max_steps (got epochs and max_steps)"]),
    ("no trials", {"budget": {"trials": 0}}, "budget.trials", ["must be an integer >= 1"]),
    ("grid over a continuous range", {"sampler": {"name": "grid"}}, "search_space.all.train.lr",
     ["the grid sampler needs a finite grid"]),
    ("empty final seeds", {"final": {"seeds": []}}, "final.seeds", ["needs at least one seed"]),
    ("misspelt final train key", {"final": {"train": {"epocs": 3}}}, "final.train.epocs", ["did you mean 'epochs'?"]),
    ("searched setting in final train", {"final": {"train": {"lr": 0.01}}}, "final.train.lr", ["is searched"]),
    ("bad suite key of the study", {"train": {"epocs": 3}}, "train.epocs", ["did you mean 'epochs'?"]),
]


@pytest.mark.parametrize("patch, key_path, fragments", [case[1:] for case in BAD_STUDIES],
                         ids=[case[0] for case in BAD_STUDIES])
def test_bad_study_files_fail_naming_file_and_key(tmp_path, patch, key_path, fragments):
    path = write_study(tmp_path, patch)
    message = load_error(path)
    assert message.startswith(f"{path}: {key_path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message


def test_a_missing_study_names_the_shipped_ones(tmp_path):
    message = load_error(tmp_path / "nope.yaml")
    assert message.startswith(f"{tmp_path / 'nope.yaml'}: study file not found") and "paper, smoke" in message


def test_include_by_shipped_suite_name(tmp_path):
    study = load_study(write_study(tmp_path, {"include": "smoke", "exclude": [{"dataset": "shapes-labels"}],
                                              "search_space": {"vqvae": DELETE, "sqvae-gauss-1": DELETE}}))
    assert len(pairs(study)) == 8 and study.suite.train["epochs"] == 3


# -- suites: per-model train overrides -------------------------------------------------------------
def test_train_resolves_suite_then_dataset_then_model_on_dataset(tmp_path):
    patch = {"train": {"lr": 1.0e-3}, "datasets": {"shapes": {"train": {"lr": 2.0e-3}}},
             "models": {"vqvae": {"datasets": {"shapes": {"beta": 0.5, "train": {"lr": 3.0e-3}}}}, "sqvae-gauss-1": {}}}
    cells = expand(load_suite(write_suite(tmp_path / "suite.yaml", patch)))
    lrs = {(c.model, c.config.train.lr) for c in cells}
    assert lrs == {("vqvae", 3.0e-3), ("sqvae-gauss-1", 2.0e-3)}
    assert all(c.config.model_options.get("beta") in (None, 0.5) and "train" not in c.config.model_options
               for c in cells)


@pytest.mark.parametrize("train, key_path, fragment", [({"epocs": 3}, "train.epocs", "did you mean 'epochs'?"),
                                                       ({"lr": -1.0}, "train.lr", "must be > 0"),
                                                       ("fast", "train", "expected a mapping of train settings")])
def test_model_on_dataset_train_errors_name_the_key(tmp_path, train, key_path, fragment):
    patch = {"models": {"vqvae": {"datasets": {"shapes": {"train": train}}}}}
    path = write_suite(tmp_path / "suite.yaml", patch)
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    assert str(info.value).startswith(f"{path}: models.vqvae.datasets.shapes.{key_path}: ") and fragment in str(info.value)


# -- the command line ------------------------------------------------------------------------------
def test_show_study_prints_describe(tmp_path):
    path = write_study(tmp_path)
    result = run_main(["show", path], cwd=tmp_path)
    assert result.code == 0 and result.err == ""
    assert result.out == describe(load_study(path)) + "\n"
    shipped = run_main(["show", STUDIES_DIR / "smoke.yaml"], cwd=tmp_path)
    assert shipped.code == 0 and shipped.out.startswith("study smoke (")
    suite = run_main(["show", "smoke"], cwd=tmp_path)  # a name both have is the suite's
    assert suite.code == 0 and suite.out.startswith("suite smoke (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml", "tiny.yaml"]


@pytest.mark.parametrize("case", ["unknown parameter for a model", "misspelt top-level key", "low above high",
                                  "test-only metric", "unknown sampler", "per-model epochs"])
def test_show_a_bad_study_exits_2_with_one_line(tmp_path, case):
    _, patch, key_path, fragments = next(c for c in BAD_STUDIES if c[0] == case)
    path = write_study(tmp_path, patch)
    result = run_main(["show", path], cwd=tmp_path)
    assert result.code == 2 and result.out == ""
    (line,) = result.err.strip().splitlines()
    assert line.startswith(f"sqvae-bench: error: {path}: {key_path}: ")
    assert all(fragment in line for fragment in fragments)


def test_list_studies(tmp_path):
    result = run_main(["list", "studies"], cwd=tmp_path)
    assert result.code == 0 and result.out == "studies:\n  paper\n  smoke\n"
