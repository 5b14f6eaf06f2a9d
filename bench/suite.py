"""Suite files: load and validate the YAML, then expand the dataset x model x seed grid.

A suite file (see suites/*.yaml and the README):

    name: smoke                       # required
    description: ...                  # optional
    include: base.yaml                # optional (a path, or a shipped suite's name); keys here override
    datasets:                         # a list of names, or a mapping name -> settings
      shapes:
        options: {size: 32}           # dataset options (bench.data)
        model_options: {size_dict: 32}  # for every model on this dataset
        train: {epochs: 3}            # per-dataset training overrides
    models:                           # a list of names, or a mapping name -> settings
      vqvae:
        options: {beta: 0.25}         # this model's option overrides
        datasets:                     # this model on one dataset: model options, and a train mapping
          shapes: {size_dict: 16, train: {lr: 3.0e-4}}
    seeds: [0, 1]
    train: {epochs: 2, batch_size: 32}  # bench.train.TrainConfig fields
    exclude: [{dataset: shapes, model: vqvae}, {seed: 1}]
    metrics: [mse, perplexity]        # table columns (bench.metrics names)
    fid: false                        # FID of test reconstructions (needs Inception weights)
    miou_absent: zero                 # mIoU convention for absent classes: zero | ignore
    reference: vqwae2023_table1       # published numbers shown beside ours (a CSV path relative to
                                      # this file, or a name under results/reference/)

Model options resolve as: dataset paper settings < model defaults < dataset.model_options <
models.<m>.options < models.<m>.datasets.<d>; train settings as: train < datasets.<d>.train <
models.<m>.datasets.<d>.train (so a tuned learning rate can differ per model). Every error names the
file, the key path and the valid choices, and is raised before anything runs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import yaml

from bench.data import DATASETS, dataset_spec
from bench.errors import ConfigError
from bench.metrics import METRICS
from bench.models import MODELS, build_model, resolve_model_options
from bench.registry import did_you_mean
from bench.run import MIOU_ABSENT, RunConfig
from bench.train import TrainConfig

SUITE_KEYS = ("name", "description", "include", "datasets", "models", "seeds", "train", "exclude", "metrics",
              "fid", "miou_absent", "reference")
DATASET_KEYS = ("options", "model_options", "train")
MODEL_KEYS = ("options", "datasets")
EXCLUDE_KEYS = ("dataset", "model", "seed")
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig))
SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


@dataclass(frozen=True)
class Cell:
    """One grid point: its id, coordinates and fully resolved config."""

    cell_id: str
    dataset: str
    model: str
    seed: int
    config: RunConfig


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    source: Path
    datasets: dict  # name -> {"options", "model_options", "train"}
    models: dict  # name -> {"options", "datasets"}
    seeds: tuple[int, ...]
    train: dict
    exclude: tuple[dict, ...]
    metrics: tuple[str, ...]
    fid: bool
    miou_absent: str
    reference: Path | None = None  # a validated reference CSV (bench.tables.load_reference)


# -- loading -------------------------------------------------------------------------------------
def fail(source: Path, path: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {path}: {message}")


def check_keys(mapping: dict, allowed: tuple[str, ...], source: Path, path: str) -> None:
    for key in mapping:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise fail(source, where, f"unknown key{did_you_mean(str(key), list(allowed))}; valid: {', '.join(allowed)}")


def expect(value, types, source: Path, path: str, what: str):
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise fail(source, path, f"expected {what}, got {type(value).__name__} {value!r}")
    return value


def check_name(name, registry, source: Path, path: str) -> None:
    if name not in registry:
        raise fail(source, path, f"unknown {registry.kind} {name!r}{did_you_mean(str(name), registry.names())}; "
                    f"valid: {', '.join(sorted(registry.names()))}")


def _check_exclude_values(rule: dict, source: Path, path: str) -> None:
    """A misspelt name or a quoted seed would otherwise exclude nothing, silently."""
    for key, registry in (("dataset", DATASETS), ("model", MODELS)):
        if key in rule:
            check_name(rule[key], registry, source, f"{path}.{key}")
    if "seed" in rule:
        expect(rule["seed"], int, source, f"{path}.seed", "an integer")


def _named_entries(value, source: Path, key: str, registry, entry_keys: tuple[str, ...]) -> dict:
    """A list of names or a mapping name -> settings, checked against a registry."""
    if isinstance(value, list):
        value = {name: None for name in value}
    expect(value, dict, source, key, f"a list of {registry.kind} names or a mapping")
    if not value:
        raise fail(source, key, f"needs at least one {registry.kind}")
    entries = {}
    for name, settings in value.items():
        check_name(name, registry, source, f"{key}.{name}")
        settings = settings or {}
        expect(settings, dict, source, f"{key}.{name}", "a mapping")
        check_keys(settings, entry_keys, source, f"{key}.{name}")
        for sub, sub_value in settings.items():
            expect(sub_value, dict, source, f"{key}.{name}.{sub}", "a mapping")
        entries[name] = {k: dict(settings.get(k) or {}) for k in entry_keys}
    return entries


def read_yaml(path: Path, chain: tuple[Path, ...] = (), keys: tuple[str, ...] = SUITE_KEYS) -> dict:
    """The mapping of the file at ``path`` merged over its ``include`` chain (a suite file, by path relative
    to the including file or by shipped suite name). ``keys``: the keys allowed at the top of ``path``
    itself (included files are suites). Raises ConfigError naming the file and key."""
    if path in chain:
        raise ConfigError(f"{path}: include cycle: {' -> '.join(map(str, chain + (path,)))}")
    if not path.exists():
        raise ConfigError(f"{path}: suite file not found (suites shipped: {', '.join(shipped_suites())})")
    raw = parse_yaml(path)
    expect(raw, dict, path, "(top level)", "a mapping")
    check_keys(raw, keys, path, "")
    if raw.get("reference") is not None:  # relative to the file that names it, so an included suite's stays right
        raw = {**raw, "reference": _resolve_reference(raw["reference"], path)}
    if "include" not in raw:
        return raw
    included = expect(raw["include"], str, path, "include", "a file path")
    base_path = (path.parent / included).resolve()
    if not base_path.exists() and Path(included).suffix == "" and included in shipped_suites():
        base_path = SUITES_DIR / f"{included}.yaml"
    if not base_path.exists():
        raise fail(path, "include", f"{included} not found (looked for {base_path})")
    base = read_yaml(base_path, chain + (path,))
    return merge(normalise_named(base), normalise_named({k: v for k, v in raw.items() if k != "include"}))


def _resolve_reference(value, path: Path) -> str:
    """The absolute path of the reference file named by ``path``'s ``reference`` key. Raises ConfigError."""
    from bench.tables import resolve_reference  # pandas and matplotlib: only for suites that name one

    expect(value, str, path, "reference", "a reference CSV path or the name of a file in results/reference/")
    try:
        return str(resolve_reference(value, path.parent))
    except ConfigError as err:
        raise fail(path, "reference", str(err)) from None


def _load_reference(raw: dict, source: Path) -> Path | None:
    """The suite's reference file, checked to be a valid reference CSV now, before anything runs."""
    if raw.get("reference") is None:
        return None
    from bench.tables import load_reference

    try:
        load_reference(raw["reference"])
    except ConfigError as err:
        raise fail(source, "reference", str(err)) from None
    return Path(raw["reference"])


def parse_yaml(path: Path):
    """The YAML value of the file at ``path``; {} for an empty file. Raises ConfigError naming it."""
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a suite file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text YAML file (it holds bytes that are not UTF-8 text)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the suite file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: 'line L, column C: problem' where PyYAML knows the place."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge: override wins; lists are replaced, not concatenated."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def normalise_named(raw: dict) -> dict:
    """Turn list-form datasets/models into mappings so includes merge per name."""
    return {k: ({n: {} for n in v} if k in ("datasets", "models") and isinstance(v, list) else v) for k, v in raw.items()}


def load_suite(path_or_name: str | Path) -> Suite:
    """Load a suite by path, or by name from the shipped suites/ folder. Raises ConfigError."""
    path = resolve_suite_path(path_or_name)
    raw = read_yaml(path, ())
    return validate_suite(raw, path)


def resolve_suite_path(path_or_name: str | Path) -> Path:
    return resolve_named_path(path_or_name, SUITES_DIR)


def shipped_suites() -> list[str]:
    return shipped_names(SUITES_DIR)


def resolve_named_path(path_or_name: str | Path, folder: Path) -> Path:
    """A file by path, or by name (no suffix) from a folder of shipped files (suites/, studies/)."""
    path = Path(path_or_name)
    if not path.exists() and path.suffix == "" and (folder / f"{path}.yaml").exists():
        path = folder / f"{path}.yaml"
    return path.resolve()


def shipped_names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def validate_suite(raw: dict, source: Path) -> Suite:
    if "name" not in raw:
        raise fail(source, "name", "required key missing")
    for key in ("datasets", "models"):
        if key not in raw:
            raise fail(source, key, "required key missing")
    raw = normalise_named(raw)
    seeds = raw.get("seeds", [0])
    expect(seeds, list, source, "seeds", "a list of integers")
    if not seeds:
        raise fail(source, "seeds", "needs at least one seed")
    for i, seed in enumerate(seeds):
        expect(seed, int, source, f"seeds[{i}]", "an integer")
    train = dict(expect(raw.get("train") or {}, dict, source, "train", "a mapping"))
    check_train(train, source, "")
    exclude = expect(raw.get("exclude") or [], list, source, "exclude", "a list of mappings")
    for i, rule in enumerate(exclude):
        expect(rule, dict, source, f"exclude[{i}]", "a mapping")
        check_keys(rule, EXCLUDE_KEYS, source, f"exclude[{i}]")
        _check_exclude_values(rule, source, f"exclude[{i}]")
    metric_names = expect(raw.get("metrics") or [], list, source, "metrics", "a list of metric names")
    for name in metric_names:
        check_name(name, METRICS, source, "metrics")
    miou_absent = raw.get("miou_absent", "zero")
    if miou_absent not in MIOU_ABSENT:
        raise fail(source, "miou_absent", f"must be one of {', '.join(MIOU_ABSENT)}; got {miou_absent!r}")
    datasets = _named_entries(raw["datasets"], source, "datasets", DATASETS, DATASET_KEYS)
    models = _named_entries(raw["models"], source, "models", MODELS, MODEL_KEYS)
    for name, entry in datasets.items():  # the top level is valid, so an error here is the override's
        check_train({**train, **entry["train"]}, source, f"datasets.{name}.", entry["train"])
    for name, entry in models.items():  # otherwise a misspelt dataset name is silently ignored
        for dataset, options in entry["datasets"].items():
            check_name(dataset, DATASETS, source, f"models.{name}.datasets.{dataset}")
            expect(options, dict, source, f"models.{name}.datasets.{dataset}", "a mapping of model options")
            if "train" in options:  # this model's train overrides on this dataset
                where = f"models.{name}.datasets.{dataset}."
                given = expect(options["train"], dict, source, f"{where}train", "a mapping of train settings")
                check_train({**train, **datasets.get(dataset, {}).get("train", {}), **given}, source, where, given)
    suite = Suite(
        name=expect(raw["name"], str, source, "name", "a string"),
        description=expect(raw.get("description", ""), str, source, "description", "a string"),
        source=source,
        datasets=datasets,
        models=models,
        seeds=tuple(seeds),
        train=train,
        exclude=tuple(exclude),
        metrics=tuple(metric_names),
        fid=expect(raw.get("fid", False), bool, source, "fid", "true or false"),
        miou_absent=miou_absent,
        reference=_load_reference(raw, source),
    )
    cells = expand(suite)
    if not cells:
        raise fail(source, "exclude", f"excludes every cell, so the suite's grid is empty ({len(datasets)} "
                    f"datasets x {len(models)} models x {len(seeds)} seeds before exclusions)")
    check_buildable(cells)  # bad options and model/data mismatches fail here
    return suite


def check_train(train: dict, source: Path, prefix: str, given: dict | None = None) -> None:
    """Raise ConfigError as '<file>: <prefix>train.<key>: <problem>' unless ``train`` makes a TrainConfig.

    ``given``: the keys written at ``prefix`` (default ``train`` itself), checked against TrainConfig's fields.
    """
    check_keys(train if given is None else given, TRAIN_KEYS, source, f"{prefix}train")
    try:
        TrainConfig(**train)
    except ConfigError as err:  # TrainConfig says "train.<key> must be ..."
        key_path, _, problem = str(err).partition(" ")
        raise fail(source, f"{prefix}{key_path}", problem) from None


def check_buildable(cells: list[Cell]) -> None:
    """Build each distinct (dataset, model, options) once on the meta device (no memory, no data):
    a setting the model rejects (e.g. an image size the network cannot take) fails before any run."""
    seen = set()
    for cell in cells:
        config = cell.config
        key = (config.dataset, json.dumps(config.data_options, sort_keys=True), config.model,
               json.dumps(config.model_options, sort_keys=True, default=str))
        if key in seen:
            continue
        seen.add(key)
        try:
            build_on_meta(config)
        except ValueError as err:
            raise ConfigError(f"{cell.cell_id}: model '{config.model}' on dataset '{config.dataset}': {err}") from None


def build_on_meta(config: RunConfig) -> None:
    """Build ``config``'s model on the meta device (no memory, no data).

    Raises:
        ValueError: a setting the model rejects (its message says which).
    """
    spec = dataset_spec(config.dataset, **config.data_options)
    with torch.device("meta"):
        build_model(config.model, spec, config.model_options)


# -- the grid ------------------------------------------------------------------------------------
def config_hash(config: RunConfig) -> str:
    """A stable hash of a fully resolved config (canonical JSON)."""
    canonical = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def make_cell_id(dataset: str, model: str, seed: int, config: RunConfig) -> str:
    return f"{dataset}_{model}_s{seed}-{config_hash(config)[:10]}"


def is_excluded(rules: tuple[dict, ...], dataset: str, model: str, seed: int) -> bool:
    point = {"dataset": dataset, "model": model, "seed": seed}
    return any(all(point[k] == v for k, v in rule.items()) for rule in rules)


def model_on_dataset(suite: Suite, dataset: str, model: str) -> tuple[dict, dict]:
    """(model options, train overrides) that ``models.<model>.datasets.<dataset>`` sets."""
    options = dict(suite.models[model]["datasets"].get(dataset, {}))
    return options, options.pop("train", {})


def cell_config(suite: Suite, dataset: str, model: str, seed: int) -> RunConfig:
    """The resolved config of one cell (see the module docstring for the order of overrides).

    Raises:
        ConfigError, TypeError: a bad option or setting, without naming the file (resolve_cell_config does).
    """
    d, m = suite.datasets[dataset], suite.models[model]
    options, train = model_on_dataset(suite, dataset, model)
    spec = dataset_spec(dataset, **d["options"])
    model_options = resolve_model_options(model, spec, {**d["model_options"], **m["options"], **options})
    return RunConfig(dataset=dataset, model=model, seed=seed, data_options=d["options"], model_options=model_options,
                     train=TrainConfig(**{**suite.train, **d["train"], **train}), fid=suite.fid,
                     miou_absent=suite.miou_absent)


def resolve_cell_config(suite: Suite, dataset: str, model: str, seed: int) -> RunConfig:
    """cell_config, with errors naming the suite file and the dataset and model entries."""
    try:
        return cell_config(suite, dataset, model, seed)
    except (ConfigError, TypeError) as err:
        raise ConfigError(f"{suite.source}: datasets.{dataset} / models.{model}: {err}") from None


def expand(suite: Suite) -> list[Cell]:
    """Every (dataset, model, seed) not excluded, in dataset-major order."""
    cells = []
    for dataset in suite.datasets:
        for model in suite.models:
            for seed in suite.seeds:
                if is_excluded(suite.exclude, dataset, model, seed):
                    continue
                config = resolve_cell_config(suite, dataset, model, seed)
                cells.append(Cell(make_cell_id(dataset, model, seed, config), dataset, model, seed, config))
    return cells


def parse_only(text: str | None) -> dict[str, set[str]]:
    """'dataset=shapes,model=vqvae+vqvae-ema' -> {"dataset": {"shapes"}, "model": {"vqvae", "vqvae-ema"}}."""
    selection: dict[str, set[str]] = {}
    for part in filter(None, (text or "").split(",")):
        key, sep, values = part.partition("=")
        if not sep or key not in EXCLUDE_KEYS:
            raise ConfigError(f"--only: expected key=value with key in {', '.join(EXCLUDE_KEYS)}; got {part!r}")
        selection.setdefault(key, set()).update(values.split("+"))
    return selection


def select(cells: list[Cell], selection: dict[str, set[str]]) -> list[Cell]:
    return [c for c in cells if all(str(getattr(c, key)) in values for key, values in selection.items())]
