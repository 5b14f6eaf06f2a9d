"""The dataset registry and the plumbing every loader shares.

A loader is a function ``loader(root: Path, download: bool, seed: int, *, <options>) -> Splits``.
Its keyword-only parameters are the dataset's options, so ``load_dataset`` checks option names
against the signature itself and there is no second list to keep in sync. One keyword-only parameter
is not an option: ``with_test: bool = True``. With ``with_test=False`` a loader must not read (nor
generate) the test split and returns ``Splits.test`` None; that is how a search (an Optuna trial)
trains and selects on train / validation only. A loader without the parameter still works: it loads
every split and ``load_dataset`` drops the test one. A dataset read from files
may also register a check, ``check(root: Path, download: bool, **options) -> None``, that finds
missing or damaged files from their names, headers and sizes without loading them
(``check_dataset``), so a run fails before anything starts rather than in a worker.

Also here: where the data root is, the one layout of a data error (dataset, paths looked at, files
expected, how to get them), and the atomic uint8 tensor cache of the slow-to-decode image folders.
"""
from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

import torch

from bench.atomic import atomic_write
from bench.data.spec import DataSpec, Splits
from bench.errors import ConfigError, DataError
from bench.registry import Registry, did_you_mean

ENV_VAR = "SQVAE_BENCH_DATA"
DEFAULT_ROOT = "data"

Loader = Callable[..., Splits]
WITH_TEST = "with_test"  # the loader parameter that is not a dataset option (see the module docstring)


@dataclass(frozen=True)
class DatasetEntry:
    """loader: ``loader(root, download, seed, *, <options>) -> Splits``.
    spec: the DataSpec, or ``spec(**options) -> DataSpec`` when options change it; known without
    reading any data, so suites resolve and validate before anything is loaded.
    check: ``check(root, download, **options)``, raising DataError where ``loader`` would fail for
    want of files (downloading them first when ``download`` and possible); None: nothing to check."""

    loader: Loader
    spec: DataSpec | Callable[..., DataSpec]
    check: Callable[..., None] | None = None


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(name: str, loader: Loader, spec: DataSpec | Callable[..., DataSpec],
                     check: Callable[..., None] | None = None) -> Loader:
    """Make ``loader`` available to ``load_dataset`` (and suite files) as ``name``.

    Args:
        name: the name suite files use.
        loader: ``loader(root, download, seed, *, <options>) -> Splits``; its keyword-only
            parameters, with defaults, are the dataset's options, except ``with_test`` (optional:
            see the module docstring).
        spec: the dataset's DataSpec, or a function of the options that returns it.
        check: optional ``check(root, download, **options)`` for ``check_dataset``: raises DataError
            when the files are missing or damaged, reading names, headers and sizes only.
    Returns: the loader, unchanged.
    Raises: ValueError if the name is taken.
    """
    DATASETS.register(name, DatasetEntry(loader, spec, check))
    return loader


def dataset_spec(name: str, **options) -> DataSpec:
    """The DataSpec of dataset ``name`` under ``options``, without loading it. Raises ConfigError."""
    entry = DATASETS.get(name)
    _check_options(name, options, dataset_options(name))
    return entry.spec(**{**dataset_options(name), **options}) if callable(entry.spec) else entry.spec


def dataset_names() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(DATASETS.names())


def dataset_options(name: str) -> dict[str, object]:
    """The options of dataset ``name`` with their defaults: the loader's keyword-only parameters but
    ``with_test``. Raises ConfigError for an unknown name."""
    parameters = inspect.signature(DATASETS.get(name).loader).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != WITH_TEST}


def resolve_root(root: str | Path | None) -> Path:
    """The data root: ``root`` if given, else $SQVAE_BENCH_DATA, else ./data; made absolute."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root).expanduser().absolute()


def load_dataset(
    name: str, root: str | Path | None = None, download: bool = False, seed: int = 0, *, with_test: bool = True,
    **options,
) -> Splits:
    """Load dataset ``name`` as uint8 train / val / test tensors (SPEC.md §3).

    Args:
        name: a registered name (see ``dataset_names()``).
        root: the data root; None means $SQVAE_BENCH_DATA, else ./data.
        download: fetch missing files where the dataset can be downloaded.
        seed: used by generated datasets only.
        with_test: False loads train and validation only: ``Splits.test`` is None and a built-in
            loader neither reads nor generates the test split (train and val are the same tensors
            either way). A registered loader without a ``with_test`` parameter loads everything and
            the test split is dropped here.
        **options: dataset-specific (see ``dataset_options(name)``).
    Raises:
        ConfigError: unknown dataset name or option.
        DataError: the data is missing or malformed.
    """
    loader = DATASETS.get(name).loader
    _check_options(name, options, dataset_options(name))
    if _takes_with_test(loader):
        options = {**options, WITH_TEST: with_test}
    splits = loader(resolve_root(root), download, seed, **options)
    return splits if with_test else replace(splits, test=None)


def _takes_with_test(loader: Loader) -> bool:
    """Whether ``loader`` has the keyword-only ``with_test`` parameter."""
    parameter = inspect.signature(loader).parameters.get(WITH_TEST)
    return parameter is not None and parameter.kind is inspect.Parameter.KEYWORD_ONLY


def check_dataset(name: str, root: str | Path | None = None, download: bool = False, **options) -> None:
    """Check that dataset ``name`` is present and readable, without loading it.

    Runs the dataset's registered check (none for generated datasets). With ``download``, a
    missing dataset that can be downloaded is downloaded here, once, then checked.
    Raises:
        ConfigError: unknown dataset name or option.
        DataError: the data is missing or malformed (the layout of ``data_error``).
    """
    entry = DATASETS.get(name)
    _check_options(name, options, dataset_options(name))
    if entry.check is not None:
        entry.check(resolve_root(root), download, **options)


def _check_options(name: str, given: dict[str, object], valid: dict[str, object]) -> None:
    unknown = sorted(set(given) - set(valid))
    if unknown:
        choices = ", ".join(valid) or "none"
        hint = did_you_mean(unknown[0], list(valid))
        raise ConfigError(
            f"dataset '{name}' has no option {', '.join(map(repr, unknown))}{hint}; valid options: {choices}"
        )


def data_error(dataset: str, problem: str, looked_at: Iterable[Path], expected: str, how: str) -> DataError:
    """The one layout of a missing- or malformed-data error.

    Args:
        dataset: the registered name.
        problem: what is wrong, e.g. "data not found".
        looked_at: the exact paths checked.
        expected: the files that should be there.
        how: how to get them (download flag or manual steps).
    """
    lines = [
        f"dataset '{dataset}': {problem}",
        f"  looked at: {', '.join(str(p) for p in looked_at)}",
        f"  expected: {expected}",
        f"  to get it: {how}",
        f"  the data root is the root argument, else ${ENV_VAR}, else ./{DEFAULT_ROOT}",
    ]
    return DataError("\n".join(lines))


def cached_tensors(
    path: Path, key: dict, build: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Return the tensors cached at ``path`` under ``key``, else build, cache and return them.

    The key describes the source (file counts, preprocessing), so a changed folder rebuilds. The file
    is written to a temporary name and renamed, so an interrupted write never leaves a half cache.
    An unreadable cache is rebuilt; an unwritable folder (read-only data) only costs a warning.
    """
    cached = _read_cache(path)
    if cached is not None and cached.get("key") == key:
        return cached["tensors"]
    tensors = build()
    try:
        atomic_write(path, lambda tmp: torch.save({"key": key, "tensors": tensors}, tmp))
    except OSError as error:
        warnings.warn(f"could not write the dataset cache {path}: {error}", stacklevel=2)
    return tensors


def cached_splits(
    path: Path, key: dict, build: Callable[[str], torch.Tensor], with_test: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The train, val and test tensors, built by ``build(split)`` and cached under ``key``.

    Train and val are cached at ``path``, test beside it at ``<stem>_test<suffix>``, so a load
    without the test split (``with_test=False``: test is None) neither opens nor builds test data.
    Both files share ``key``: it describes the whole source, so any change rebuilds both.
    """
    fit = cached_tensors(path, key, lambda: {split: build(split) for split in ("train", "val")})
    if not with_test:
        return fit["train"], fit["val"], None
    test = cached_tensors(path.with_name(f"{path.stem}_test{path.suffix}"), key, lambda: {"test": build("test")})
    return fit["train"], fit["val"], test["test"]


def _read_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # a damaged file can fail in many ways; it is only a cache, so rebuild it
        return None
