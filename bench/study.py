"""Study files: an equal-budget Optuna search over a suite's grid, loaded and validated like suites.

A study file (see studies/*.yaml) holds the keys of a suite, usually through
``include:`` (a suite file, by path relative to the study file or by shipped suite name; the study's
own suite keys override the included ones exactly as in suite includes), and these:

    name: smoke                               # required
    include: ../suites/smoke.yaml             # datasets, models, seeds, train, exclude, metrics, ...
    search_space:                             # "all": every model; a model's entry overrides "all"
      all: {train.lr: {type: float, low: 3.0e-4, high: 3.0e-3, log: true}}
      vqvae: {beta: {type: float, low: 0.1, high: 1.0}}
      sqvae-gauss-1: {size_dict: {type: categorical, choices: [32, 64]}}
    objective: mse                            # or a list: [mse, perplexity]
    budget: {trials: 4, epochs: 2, seed: 0}   # or max_steps instead of epochs
    sampler: {name: tpe, seed: 0}             # tpe (default) | random | grid, plus the sampler's options
    pruner: {name: median, n_startup_trials: 2}  # median | hyperband | none, plus the pruner's options
    final: {seeds: [0, 1], train: {epochs: 3}}

Parameters: ``float`` (low, high, log, step), ``int`` (low, high, log, step) or ``categorical``
(choices); a name is a model option (``beta``, ``gamma``, ``threshold``, ``log_param_q_init``,
``tau_decay``, ``size_dict``, ...) or ``train.<field>`` of bench.train.TrainConfig. Every name is
checked against the options of each model it applies to, on each dataset of the grid, and the ends
of every range (each choice) are resolved and built once, so a bad value fails at load.

The rules a study enforces, all before anything runs (one ConfigError naming the file and the key):

- **Equal budget.** Every (dataset, model) gets ``budget.trials`` finished trials, each trained for
  ``budget.epochs`` (or ``budget.max_steps``) at ``budget.seed``. Nothing else may set a budget: a
  ``budget``/``trials`` key under a model, per-model ``epochs``/``max_steps``/``batch_size`` train
  overrides (the batch size fixes the steps of an epoch), and ``train.epochs``/``train.max_steps``/
  ``train.batch_size`` in the search space are refused. Pruned and failed trials count.
- **Validation objectives only.** The objective names validation metrics that bench/evaluate.py
  returns for every dataset kind of the grid (``VALIDATION_METRICS``); never ``loss`` (its scale
  differs between models) nor ``fid`` (computed on the test split only). Directions come from the
  metric registry.
- **Several objectives** give a Pareto front per (dataset, model). The final stage takes
  **the Pareto-optimal trial best on the first objective** (``MULTI_OBJECTIVE_RULE``). Optuna cannot
  prune multi-objective trials, so a pruner other than ``none`` is refused then (the default pruner
  is ``median`` for one objective, ``none`` for several).
- **Pruning** works on the per-epoch validation values (the resource is the epoch), so with an
  epochs budget a Hyperband ``max_resource`` above it is refused; ``group`` of TPE needs
  ``multivariate``.
- **Grid sampler.** Every parameter needs a finite grid (choices, an int range, or a float range
  with ``step``), and ``budget.trials`` may not exceed the smallest grid of any model: more trials
  than grid points would repeat points, and so spend one model's budget on duplicates. With fewer
  trials than points, each model visits that many points of its grid in a seeded random order.
- **Final stage.** ``final.seeds`` (default: the suite's seeds) and ``final.train`` (overrides of the
  suite's train settings, winning over per-dataset train settings; ``epochs`` there also sets
  ``max_steps: 0`` unless given, so the epochs count) retrain each (dataset, model) with its best
  parameters through a generated suite (``final_suite``). A train setting that is searched may not
  also be set in ``final.train``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

from bench.data import dataset_spec
from bench.errors import ConfigError
from bench.metrics import METRICS
from bench.models import MODELS
from bench.registry import did_you_mean
from bench.run import RunConfig
from bench.suite import (
    SUITE_KEYS,
    TRAIN_KEYS,
    Suite,
    build_on_meta,
    cell_config,
    check_keys,
    check_name,
    check_train,
    expect,
    fail,
    is_excluded,
    model_on_dataset,
    normalise_named,
    parse_yaml,
    read_yaml,
    resolve_named_path,
    shipped_names,
    shipped_suites,
    validate_suite,
)

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
STUDY_KEYS = ("search_space", "objective", "budget", "sampler", "pruner", "final")
PARAM_KEYS = ("type", "low", "high", "step", "log", "choices")
PARAM_TYPES = ("float", "int", "categorical")
BUDGET_KEYS = ("trials", "epochs", "max_steps", "seed")
FINAL_KEYS = ("seeds", "train")
BUDGET_TRAIN_KEYS = ("epochs", "max_steps", "batch_size")  # a trial's training budget
BUDGET_WORDS = ("budget", "trials", "epochs", "max_steps")
BUDGET_RULE = ("a study gives every model the same budget: trials and epochs (or max_steps) once under "
               "`budget`, the batch size once under `train` or `datasets.<d>.train`")
# Validation metrics of bench/evaluate.py per dataset kind that a registered metric names.
VALIDATION_METRICS = {
    "image": ("mse", "sse", "psnr", "ssim", "perplexity", "perplexity_batch", "usage"),
    "labels": ("miou", "pixel_acc", "acc", "perplexity", "perplexity_batch", "usage"),
}
NOT_OBJECTIVES = {
    "loss": "the loss is not comparable across models (each model's objective has its own terms and scale)",
    "fid": "FID is computed on the test split only, never during the search",
}
MULTI_OBJECTIVE_RULE = "the Pareto-optimal trial best on the first objective"
# Options a study may pass to each sampler and pruner: an int is "an integer >= it"; bool is true/false;
# ("auto", n) is the word auto or an integer >= n.
SAMPLER_OPTIONS = {
    "tpe": {"n_startup_trials": 0, "n_ei_candidates": 1, "multivariate": bool, "group": bool, "constant_liar": bool,
            "consider_endpoints": bool},
    "random": {},
    "grid": {},
}
PRUNER_OPTIONS = {
    "median": {"n_startup_trials": 0, "n_warmup_steps": 0, "interval_steps": 1, "n_min_trials": 1},
    "hyperband": {"min_resource": 1, "max_resource": ("auto", 1), "reduction_factor": 2, "bootstrap_count": 0},
    "none": {},
}


@dataclass(frozen=True)
class Param:
    """One searched parameter: a model option (``beta``) or a train setting (``train.lr``).

    kind: "float" | "int" | "categorical"; low/high/step/log for float and int (step None: continuous
    floats, ints by 1); choices for categorical.
    """

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        """This parameter's value for an Optuna ``trial``."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self) -> list:
        """Every value of the grid sampler. Raises ConfigError for a float range without a step."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.step is None:
            raise ConfigError(f"parameter '{self.name}': a float range without a step has no finite grid "
                              "(give a step, or make it categorical)")
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def ends(self) -> list:
        """The values checked at load: each choice, or low and high."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def describe(self) -> str:
        """'float [0.0003, 0.003] log', 'int [1, 8] step 2', 'categorical {32, 64}'."""
        if self.kind == "categorical":
            return "categorical {" + ", ".join(map(repr, self.choices)) + "}"
        extra = (" log" if self.log else "") + (f" step {self.step}" if self.step is not None else "")
        return f"{self.kind} [{self.low}, {self.high}]{extra}"


@dataclass(frozen=True)
class Study:
    """A loaded, validated study file; see the module docstring.

    suite: the grid (bench.suite.Suite from the include and this file's suite keys).
    space: model name -> its parameters ("all" merged in; a model's own entry wins).
    objective / directions: validation metric names and "minimize" / "maximize" for each.
    trials: finished trials per (dataset, model). budget_train: the train settings every trial gets
    ({"epochs": n, "max_steps": 0} or {"max_steps": n}). trial_seed: the seed trials train with.
    sampler: {"name", "seed", **options}; pruner: {"name", **options}.
    final_seeds / final_train: the final stage's seeds and train overrides.
    """

    name: str
    description: str
    source: Path
    suite: Suite
    space: dict
    objective: tuple[str, ...]
    directions: tuple[str, ...]
    trials: int
    budget_train: dict
    trial_seed: int
    sampler: dict
    pruner: dict
    final_seeds: tuple[int, ...]
    final_train: dict


# -- loading -------------------------------------------------------------------------------------
def resolve_study_path(path_or_name: str | Path) -> Path:
    """A study file by path, or by name from the shipped studies/ folder."""
    return resolve_named_path(path_or_name, STUDIES_DIR)


def shipped_studies() -> list[str]:
    return shipped_names(STUDIES_DIR)


def is_study(path_or_name: str | Path) -> bool:
    """True when ``path_or_name`` is a study rather than a suite: a file with a study key, or the name of
    a shipped study that no shipped suite has (a name both have is the suite's)."""
    path = Path(path_or_name)
    if path.is_file():
        try:
            raw = parse_yaml(path)
        except ConfigError:
            return False  # the suite loader reports it
        return isinstance(raw, dict) and any(key in raw for key in STUDY_KEYS)
    name = str(path_or_name)
    return not path.exists() and name in shipped_studies() and name not in shipped_suites()


def load_study(path_or_name: str | Path) -> Study:
    """Load and validate a study file. Raises ConfigError naming the file and the key."""
    path = resolve_study_path(path_or_name)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a study file")
    if not path.exists():
        raise ConfigError(f"{path}: study file not found (studies shipped: {', '.join(shipped_studies())})")
    own = expect(parse_yaml(path), dict, path, "(top level)", "a mapping")
    check_keys(own, SUITE_KEYS + STUDY_KEYS, path, "")
    for key in ("name", "search_space", "objective", "budget"):  # in the study itself, not inherited
        if key not in own:
            raise fail(path, key, "required key missing")
    raw = normalise_named(read_yaml(path, keys=SUITE_KEYS + STUDY_KEYS))
    raw["description"] = own.get("description", "")  # the suite's would describe the suite
    _refuse_model_budgets(raw, path)
    suite = validate_suite({k: v for k, v in raw.items() if k in SUITE_KEYS}, path)
    return _validate(raw, suite, path)


def _validate(raw: dict, suite: Suite, source: Path) -> Study:
    grid = _pairs(suite)
    trials, budget_train, trial_seed = _parse_budget(raw["budget"], source)
    objective = _parse_objective(raw["objective"], suite, grid, source)
    space, origin = _parse_space(raw["search_space"], grid, source)
    for dataset, model in grid:
        _check_params(suite, budget_train, trial_seed, dataset, model, space[model], origin, source)
    sampler = _parse_choice(raw.get("sampler", "tpe"), SAMPLER_OPTIONS, "sampler", source)
    sampler.setdefault("seed", 0)
    default_pruner = "median" if len(objective) == 1 else "none"
    pruner = _parse_choice(raw.get("pruner", default_pruner), PRUNER_OPTIONS, "pruner", source)
    if len(objective) > 1 and pruner["name"] != "none":
        raise fail(source, "pruner.name", f"Optuna cannot prune trials with several objectives "
                   f"({', '.join(objective)}); use pruner: {{name: none}} or one objective")
    _check_combinations(sampler, pruner, budget_train, source)
    if sampler["name"] == "grid":
        _check_grid(space, origin, trials, source)
    final_seeds, final_train = _parse_final(raw.get("final") or {}, suite, space, source)
    return Study(name=suite.name, description=suite.description, source=source, suite=suite, space=space,
                 objective=objective, directions=tuple(_direction(name) for name in objective), trials=trials,
                 budget_train=budget_train, trial_seed=trial_seed, sampler=sampler, pruner=pruner,
                 final_seeds=final_seeds, final_train=final_train)


def _refuse_model_budgets(raw: dict, source: Path) -> None:
    """A budget key under a model, or a per-model epochs/max_steps/batch_size: each model would get its own."""
    models = raw.get("models")
    for model, entry in (models.items() if isinstance(models, dict) else ()):
        entry = entry if isinstance(entry, dict) else {}
        _refuse_budget_words(entry, source, f"models.{model}")
        datasets = entry.get("datasets")
        for dataset, options in (datasets.items() if isinstance(datasets, dict) else ()):
            options = options if isinstance(options, dict) else {}
            where = f"models.{model}.datasets.{dataset}"
            _refuse_budget_words(options, source, where)
            train = options.get("train")
            for key in (train if isinstance(train, dict) else ()):
                if key in BUDGET_TRAIN_KEYS:
                    raise fail(source, f"{where}.train.{key}", BUDGET_RULE)


def _refuse_budget_words(mapping: dict, source: Path, path: str) -> None:
    for key in mapping:
        if key in BUDGET_WORDS:
            raise fail(source, f"{path}.{key}", BUDGET_RULE)


def _parse_budget(raw, source: Path) -> tuple[int, dict, int]:
    """(trials, budget_train, trial_seed) from the ``budget`` mapping."""
    expect(raw, dict, source, "budget", "a mapping with trials and epochs (or max_steps)")
    check_keys(raw, BUDGET_KEYS, source, "budget")
    if "trials" not in raw:
        raise fail(source, "budget.trials", "required key missing")
    trials = _integer(raw["trials"], 1, source, "budget.trials")
    given = [key for key in ("epochs", "max_steps") if key in raw]
    if len(given) != 1:
        raise fail(source, "budget", f"give exactly one of epochs, max_steps (got {' and '.join(given) or 'neither'})")
    amount = _integer(raw[given[0]], 1, source, f"budget.{given[0]}")
    budget_train = {"epochs": amount, "max_steps": 0} if given[0] == "epochs" else {"max_steps": amount}
    seed = expect(raw.get("seed", 0), int, source, "budget.seed", "an integer")
    return trials, budget_train, seed


def _integer(value, minimum: int, source: Path, path: str) -> int:
    expect(value, int, source, path, f"an integer >= {minimum}")
    if value < minimum:
        raise fail(source, path, f"must be an integer >= {minimum}; got {value}")
    return value


def _parse_objective(raw, suite: Suite, grid: list[tuple[str, str]], source: Path) -> tuple[str, ...]:
    """Validation metric names, each applicable to every dataset kind of the grid."""
    names = [raw] if isinstance(raw, str) else expect(raw, list, source, "objective", "a metric name or a list")
    if not names:
        raise fail(source, "objective", "needs at least one metric")
    kinds = {d: dataset_spec(d, **suite.datasets[d]["options"]).kind for d in dict.fromkeys(d for d, _ in grid)}
    for i, name in enumerate(names):
        path = "objective" if isinstance(raw, str) else f"objective[{i}]"
        expect(name, str, source, path, "a metric name")
        check_name(name, METRICS, source, path)
        if name in NOT_OBJECTIVES:
            raise fail(source, path, f"'{name}' cannot be an objective: {NOT_OBJECTIVES[name]}")
        if name in names[:i]:
            raise fail(source, path, f"'{name}' is given twice")
        for dataset, kind in kinds.items():
            if name not in VALIDATION_METRICS[kind]:
                raise fail(source, path, f"'{name}' is not a validation metric of dataset '{dataset}' ({kind}); "
                           f"valid there: {', '.join(VALIDATION_METRICS[kind])}")
    return tuple(names)


def _direction(metric: str) -> str:
    return "maximize" if METRICS.get(metric).higher_is_better else "minimize"


def _parse_space(raw, grid: list[tuple[str, str]], source: Path) -> tuple[dict, dict]:
    """(model -> tuple of Param, (model, name) -> the search_space group that set it)."""
    expect(raw, dict, source, "search_space", "a mapping: all or a model name -> parameters")
    models = list(dict.fromkeys(m for _, m in grid))
    groups = {}
    for group, entries in raw.items():
        if group != "all" and group not in models:
            known = f"model '{group}' is not in the study's grid" if group in MODELS else f"unknown model '{group}'"
            raise fail(source, f"search_space.{group}", f"{known}{did_you_mean(str(group), ['all', *models])}; "
                       f"valid: all, {', '.join(models)}")
        expect(entries, dict, source, f"search_space.{group}", "a mapping: parameter name -> its range")
        groups[group] = {name: _parse_param(name, spec, source, f"search_space.{group}.{name}")
                         for name, spec in entries.items()}
    space, origin = {}, {}
    for model in models:
        params = {**groups.get("all", {}), **groups.get(model, {})}
        if not params:
            raise fail(source, "search_space", f"model '{model}' has no parameter to search (add one under "
                       f"search_space.all or search_space.{model})")
        space[model] = tuple(params.values())
        origin.update({(model, name): model if name in groups.get(model, {}) else "all" for name in params})
    return space, origin


def _parse_param(name, spec, source: Path, path: str) -> Param:
    """One parameter's range, checked on its own (its name against the models comes later)."""
    name = str(name)
    field = name.removeprefix("train.") if name.startswith("train.") else None
    if name in BUDGET_WORDS or field in BUDGET_TRAIN_KEYS:
        raise fail(source, path, f"cannot be searched: {BUDGET_RULE}")
    if field is not None:
        if field not in TRAIN_KEYS:
            raise fail(source, path, f"unknown train setting '{field}'{did_you_mean(field, list(TRAIN_KEYS))}; "
                       f"valid: {', '.join(TRAIN_KEYS)}")
    expect(spec, dict, source, path, "a mapping with type and low/high or choices")
    check_keys(spec, PARAM_KEYS, source, path)
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise fail(source, f"{path}.type", _not_one_of(kind, PARAM_TYPES, "type"))
    if kind == "categorical":
        return _categorical(name, spec, source, path)
    return _numeric(name, kind, spec, source, path)


def _categorical(name: str, spec: dict, source: Path, path: str) -> Param:
    for key in ("low", "high", "step", "log"):
        if key in spec:
            raise fail(source, f"{path}.{key}", "only float and int parameters take a range; give choices")
    choices = expect(spec.get("choices"), list, source, f"{path}.choices", "a non-empty list of values")
    if not choices:
        raise fail(source, f"{path}.choices", "needs at least one value")
    for i, choice in enumerate(choices):
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            raise fail(source, f"{path}.choices[{i}]",
                       f"expected a number, a string, true/false or null; got {choice!r}")
        if any(type(other) is type(choice) and other == choice for other in choices[:i]):
            raise fail(source, f"{path}.choices[{i}]", f"{choice!r} is given twice")
    return Param(name, "categorical", choices=tuple(choices))


def _numeric(name: str, kind: str, spec: dict, source: Path, path: str) -> Param:
    if "choices" in spec:
        raise fail(source, f"{path}.choices", "only categorical parameters take choices")
    types, what = ((int, float), "a number") if kind == "float" else (int, "an integer")
    for key in ("low", "high"):
        if key not in spec:
            raise fail(source, f"{path}.{key}", "required key missing")
        expect(spec[key], types, source, f"{path}.{key}", what)
    low, high = spec["low"], spec["high"]
    if low > high:
        raise fail(source, path, f"low ({low}) is above high ({high})")
    log = expect(spec.get("log", False), bool, source, f"{path}.log", "true or false")
    if log and low <= 0:
        raise fail(source, f"{path}.log", f"a log range needs low > 0; got low {low}")
    step = spec.get("step")
    if step is not None:
        expect(step, types, source, f"{path}.step", what)
        if step <= 0:
            raise fail(source, f"{path}.step", f"must be positive; got {step}")
        if log and (kind == "float" or step != 1):
            raise fail(source, f"{path}.step", "a log range takes no step (Optuna samples it continuously)")
    if kind == "float":
        low, high, step = float(low), float(high), None if step is None else float(step)
    return Param(name, kind, low, high, step, log)


def _check_params(suite: Suite, budget_train: dict, seed: int, dataset: str, model: str, params: tuple[Param, ...],
                  origin: dict, source: Path) -> None:
    """Each parameter exists for ``model`` on ``dataset``, and each end of its range resolves and builds."""
    options = _trial_config(suite, budget_train, seed, dataset, model, {}).model_options
    for param in params:
        path = f"search_space.{origin[(model, param.name)]}.{param.name}"
        is_option = not param.name.startswith("train.")
        if is_option and param.name not in options:
            raise fail(source, path, f"model '{model}' has no option '{param.name}'"
                       f"{did_you_mean(param.name, list(options))}; valid: {', '.join(options)}")
        for value in param.ends():
            try:
                config = _trial_config(suite, budget_train, seed, dataset, model, {param.name: value})
                if is_option:  # the model checks its own values when built
                    build_on_meta(config)
            except (ConfigError, TypeError, ValueError) as err:
                raise fail(source, path, f"{value!r} fails for model '{model}' on dataset '{dataset}': {err}") from None


def _parse_choice(raw, registry: dict, key: str, source: Path) -> dict:
    """A sampler or pruner: a name, or {name, [seed], **options} checked against ``registry``."""
    raw = {"name": raw} if isinstance(raw, str) else dict(expect(raw, dict, source, key, "a name or a mapping"))
    name = raw.get("name")
    if name not in registry:
        raise fail(source, f"{key}.name", _not_one_of(name, list(registry), key))
    rules = registry[name]
    check_keys(raw, ("name", *(("seed",) if key == "sampler" else ()), *rules), source, key)
    if "seed" in raw:
        expect(raw["seed"], int, source, f"{key}.seed", "an integer")
    for option, rule in rules.items():
        if option in raw:
            _check_option(raw[option], rule, source, f"{key}.{option}")
    return raw


def _not_one_of(value, choices, what: str) -> str:
    """The problem of a missing or unknown name, with a "did you mean" and the valid names."""
    problem = "required key missing" if value is None else \
        f"unknown {what} {value!r}{did_you_mean(str(value), list(choices))}"
    return f"{problem}; valid: {', '.join(choices)}"


def _check_option(value, rule, source: Path, path: str) -> None:
    if rule is bool:
        expect(value, bool, source, path, "true or false")
    elif isinstance(rule, tuple):
        if value != rule[0]:
            expect(value, int, source, path, f"{rule[0]!r} or an integer >= {rule[1]}")
            _integer(value, rule[1], source, path)
    else:
        _integer(value, rule, source, path)


def _check_combinations(sampler: dict, pruner: dict, budget_train: dict, source: Path) -> None:
    """Options that Optuna accepts alone but that make no sense together."""
    if sampler.get("group") and not sampler.get("multivariate"):
        raise fail(source, "sampler.group", "needs multivariate: true")
    low, high = pruner.get("min_resource", 1), pruner.get("max_resource", "auto")
    if high != "auto" and low > high:
        raise fail(source, "pruner.min_resource", f"is above max_resource ({low} > {high})")
    epochs = budget_train.get("epochs") if budget_train.get("max_steps", 0) == 0 else None
    if high != "auto" and epochs is not None and high > epochs:
        raise fail(source, "pruner.max_resource", f"trials report once per epoch and train {epochs} epochs, so "
                   f"max_resource {high} is never reached; at most {epochs}")


def _check_grid(space: dict, origin: dict, trials: int, source: Path) -> None:
    """Every parameter has a finite grid, and no model has fewer grid points than trials."""
    sizes = {}
    for model, params in space.items():
        sizes[model] = 1
        for param in params:
            try:
                sizes[model] *= len(param.grid_values())
            except ConfigError as err:
                raise fail(source, f"search_space.{origin[(model, param.name)]}.{param.name}",
                           f"the grid sampler needs a finite grid: {err}") from None
    smallest = min(sizes, key=sizes.get)
    if trials > sizes[smallest]:
        raise fail(source, "budget.trials", f"{trials} trials exceed the grid of model '{smallest}' "
                   f"({sizes[smallest]} points), so some trials would repeat a point; at most {sizes[smallest]}")


def _parse_final(raw, suite: Suite, space: dict, source: Path) -> tuple[tuple[int, ...], dict]:
    """(final seeds, final train overrides)."""
    expect(raw, dict, source, "final", "a mapping with seeds and train")
    check_keys(raw, FINAL_KEYS, source, "final")
    seeds = expect(raw.get("seeds", list(suite.seeds)), list, source, "final.seeds", "a list of integers")
    if not seeds:
        raise fail(source, "final.seeds", "needs at least one seed")
    for i, seed in enumerate(seeds):
        expect(seed, int, source, f"final.seeds[{i}]", "an integer")
    train = dict(expect(raw.get("train") or {}, dict, source, "final.train", "a mapping of train settings"))
    if "epochs" in train:  # as in the budget: epochs count only without max_steps
        train.setdefault("max_steps", 0)
    for entry in [{}] + [d["train"] for d in suite.datasets.values()]:
        check_train({**suite.train, **entry, **train}, source, "final.", train)
    searched = {p.name for params in space.values() for p in params}
    for key in train:
        if f"train.{key}" in searched:
            raise fail(source, f"final.train.{key}", f"is searched (train.{key}); the final stage uses each model's "
                       "best value")
    return tuple(seeds), train


# -- the grid, trials and the final stage --------------------------------------------------------
def pairs(study: Study) -> list[tuple[str, str]]:
    """Every (dataset, model) of the study's grid, dataset-major; exclusions that name a seed do not count."""
    return _pairs(study.suite)


def _pairs(suite: Suite) -> list[tuple[str, str]]:
    rules = tuple(rule for rule in suite.exclude if "seed" not in rule)
    return [(d, m) for d in suite.datasets for m in suite.models if not is_excluded(rules, d, m, -1)]


def split_params(params: dict) -> tuple[dict, dict]:
    """{"train.lr": 1e-3, "beta": 0.5} -> ({"beta": 0.5}, {"lr": 1e-3}): model options and train settings."""
    options = {k: v for k, v in params.items() if not k.startswith("train.")}
    train = {k.removeprefix("train."): v for k, v in params.items() if k.startswith("train.")}
    return options, train


def _on_dataset(suite: Suite, dataset: str, model: str, params: dict, train: dict | None = None) -> dict:
    """``models.<model>.datasets.<dataset>`` of ``suite`` with ``params`` merged in (and ``train`` under them)."""
    old_options, old_train = model_on_dataset(suite, dataset, model)
    options, tuned_train = split_params(params)
    return {**old_options, **options, "train": {**old_train, **(train or {}), **tuned_train}}


def _trial_config(suite: Suite, budget_train: dict, seed: int, dataset: str, model: str, params: dict) -> RunConfig:
    entry = suite.models[model]
    on_dataset = _on_dataset(suite, dataset, model, params, budget_train)
    models = {**suite.models, model: {**entry, "datasets": {**entry["datasets"], dataset: on_dataset}}}
    return cell_config(replace(suite, models=models), dataset, model, seed)


def trial_config(study: Study, dataset: str, model: str, params: dict) -> RunConfig:
    """The config a trial of (``dataset``, ``model``) trains: the suite's cell config at ``trial_seed`` with
    the budget applied and ``params`` ("train.<field>" -> TrainConfig, others -> model options).

    Raises:
        ConfigError: a parameter the model or TrainConfig lacks, or a value they reject.
    """
    try:
        return _trial_config(study.suite, study.budget_train, study.trial_seed, dataset, model, params)
    except (ConfigError, TypeError) as err:
        where = f"trial of model '{model}' on dataset '{dataset}' with {params}"
        raise ConfigError(f"{study.source}: {where}: {err}") from None


def final_suite(study: Study, best: dict[tuple[str, str], dict]) -> dict:
    """The final stage as a suite (a YAML-ready dict): each (dataset, model) with its best parameters.

    ``best``: (dataset, model) -> the best trial's params. A pair of the grid without an entry (no
    finished trial) is excluded. Loaded back with bench.suite, each cell's config equals
    ``trial_config`` of its params except for the seed and the train settings (final, not budget).

    Raises:
        ConfigError: a pair that is not in the study, or a parameter not in its model's space.
    """
    suite, grid = study.suite, pairs(study)
    models = {m: {"options": e["options"], "datasets": dict(e["datasets"])} for m, e in suite.models.items()}
    for (dataset, model), params in best.items():
        if (dataset, model) not in grid:
            raise ConfigError(f"{study.source}: ({dataset}, {model}) is not a (dataset, model) of study '{study.name}'")
        unknown = set(params) - {p.name for p in study.space[model]}
        if unknown:
            raise ConfigError(f"{study.source}: parameters {sorted(unknown)} of ({dataset}, {model}) are not in "
                              f"search_space (was the study file changed after the search?)")
        models[model]["datasets"][dataset] = _without_empty(_on_dataset(suite, dataset, model, params))
    untuned = [{"dataset": d, "model": m} for d, m in grid if (d, m) not in best]
    datasets = {d: _without_empty({**e, "train": {k: v for k, v in e["train"].items() if k not in study.final_train}})
                for d, e in suite.datasets.items()}
    return copy.deepcopy({
        "name": f"{study.name}-tuned",
        "description": f"{study.name}: the best trial of each (dataset, model), retrained on the final seeds",
        "datasets": datasets,
        "models": {m: _without_empty(entry) for m, entry in models.items()},
        "seeds": list(study.final_seeds),
        "train": {**suite.train, **study.final_train},
        "exclude": [*suite.exclude, *untuned],
        "metrics": list(suite.metrics),
        "fid": suite.fid,
        "miou_absent": suite.miou_absent,
    })


def _without_empty(mapping: dict) -> dict:
    return {k: v for k, v in mapping.items() if v != {}}


# -- Optuna --------------------------------------------------------------------------------------
def make_sampler(study: Study, space_for_grid: tuple[Param, ...] | None = None):
    """The study's Optuna sampler, seeded; the grid sampler needs the (dataset, model)'s parameters."""
    import optuna

    options = {k: v for k, v in study.sampler.items() if k not in ("name", "seed")}
    seed = study.sampler.get("seed", 0)
    if study.sampler["name"] == "grid":
        if space_for_grid is None:
            raise ValueError("the grid sampler needs the parameters of one (dataset, model)")
        return optuna.samplers.GridSampler({p.name: p.grid_values() for p in space_for_grid}, seed=seed)
    if study.sampler["name"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, **options)


def make_pruner(study: Study):
    """The study's Optuna pruner (resource: epochs, as trials report once per epoch)."""
    import optuna

    options = {k: v for k, v in study.pruner.items() if k != "name"}
    factories = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
                 "none": optuna.pruners.NopPruner}
    return factories[study.pruner["name"]](**options)


# -- showing -------------------------------------------------------------------------------------
def describe(study: Study) -> str:
    """What `sqvae-bench show STUDY` prints: objective, budget, sampler, pruner, final stage, and per
    (dataset, model) its resolved search space."""
    grid = pairs(study)
    unit = "epochs" if study.budget_train.get("max_steps", 0) == 0 else "max_steps"
    amount = study.budget_train[unit]
    budget = f"{amount} {'step' if unit == 'max_steps' else 'epoch'}{'s' if amount != 1 else ''}"
    lines = [f"study {study.name} ({study.source}): {len(grid)} (dataset, model) pairs x {study.trials} trials "
             f"= {len(grid) * study.trials} trials"]
    if study.description:
        lines.append(f"  {study.description}")
    lines += [
        f"objective: {_describe_objective(study)}",
        f"budget: {study.trials} finished trials per (dataset, model) (pruned and failed ones count), each "
        f"{budget} at seed {study.trial_seed}; the same for every model",
        f"sampler: {_describe_choice(study.sampler)}",
        f"pruner: {_describe_choice(study.pruner)}",
        f"final: seeds {', '.join(map(str, study.final_seeds))}; train {_describe_train(study)}",
    ]
    for dataset, model in grid:
        config = trial_config(study, dataset, model, {})
        lines.append(f"{dataset} / {model} (batch {config.train.batch_size}):")
        width = max(len(p.name) for p in study.space[model])
        for param in study.space[model]:
            current = _current_value(config, param.name)
            lines.append(f"  {param.name:{width}s}  {param.describe()}  (default {current})")
    return "\n".join(lines)


def _describe_objective(study: Study) -> str:
    text = ", ".join(f"{name} ({direction})" for name, direction in zip(study.objective, study.directions))
    if len(study.objective) > 1:
        text += f" on validation; Pareto front, the final stage takes {MULTI_OBJECTIVE_RULE} ({study.objective[0]})"
    else:
        text += " on validation"
    return text


def _describe_choice(choice: dict) -> str:
    options = ", ".join(f"{k}={v}" for k, v in choice.items() if k != "name")
    return choice["name"] + (f" ({options})" if options else "")


def _describe_train(study: Study) -> str:
    """The final stage's train settings: the suite's with final.train, then what each dataset changes."""
    text = ", ".join(f"{k}={v}" for k, v in {**study.suite.train, **study.final_train}.items()) or "defaults"
    for dataset in dict.fromkeys(d for d, _ in pairs(study)):
        settings = {k: v for k, v in study.suite.datasets[dataset]["train"].items() if k not in study.final_train}
        if settings:
            text += f"; {dataset}: " + ", ".join(f"{k}={v}" for k, v in settings.items())
    return text


def _current_value(config: RunConfig, name: str) -> str:
    """The value a parameter has when not searched, as text."""
    train = name.startswith("train.")
    value = getattr(config.train, name.removeprefix("train.")) if train else config.model_options[name]
    return f"{value:.4g}" if isinstance(value, float) else repr(value)
