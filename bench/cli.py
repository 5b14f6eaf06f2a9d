"""The sqvae-bench command line: thin subcommands over the library.

Exit codes: 0 success, 1 some cells failed, 2 usage, config or data error.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

from bench.errors import BenchError, ConfigError, StoreError

DEFAULT_RUNS = Path("runs")
DEFAULT_RESULTS = Path("results")


def _suite_parts(args):
    from bench.suite import expand, load_suite, parse_only, select

    suite = load_suite(args.suite)  # a suite whose grid is empty (all excluded) fails here
    cells = select(expand(suite), parse_only(args.only))
    if not cells:
        raise ConfigError(f"--only {args.only!r} selects no cell of suite '{suite.name}'")
    return suite, cells


def _check_executor_args(args, command: str) -> None:
    """Raise ConfigError for a bad combination of --executor, --scheduler, --dask-workers, --cells-per-gpu."""
    for name, value in (("--dask-workers", args.dask_workers), ("--cells-per-gpu", args.cells_per_gpu)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1; got {value}")
    if args.executor != "dask":
        for name, value in (("--scheduler", args.scheduler), ("--dask-workers", args.dask_workers)):
            if value is not None:
                raise ConfigError(f"{name} needs --executor dask")
        if command == "tune" and args.cells_per_gpu is not None:
            raise ConfigError("--cells-per-gpu with `tune` needs --executor dask (local trials run on the default GPU)")
        return
    if (args.scheduler is None) == (args.dask_workers is None):
        raise ConfigError("--executor dask needs either --scheduler ADDRESS (a running Dask cluster) or "
                          "--dask-workers N (a local cluster started for this run), not both")
    from bench.dask_executor import require_dask

    require_dask()


@contextlib.contextmanager
def _dask_cluster(args, folders: list[tuple[str, Path]]):
    """None for the local pool; else the Dask cluster of this invocation (closed after it), once every
    worker is seen to share ``folders`` ((option, folder) pairs)."""
    if args.executor != "dask":
        yield None
        return
    from bench.dask_executor import DaskCluster

    with DaskCluster(args.scheduler, args.dask_workers, args.device, args.cells_per_gpu) as cluster:
        for option, folder in folders:
            cluster.check_shared(folder, option)
        print(cluster.describe(), flush=True)
        yield cluster


def cmd_run(args) -> int:
    from bench.lifecycle import RunOptions, check_inputs, run_suite
    from bench.run import RunEnv
    from bench.tracking import ui_command

    _check_executor_args(args, "run")
    suite, cells = _suite_parts(args)
    output = Path(args.output or DEFAULT_RUNS / suite.name)
    env = RunEnv(device=args.device, data_root=args.data_root, download=args.download, fid_weights=args.fid_weights,
                 lpips_weights=args.lpips_weights,
                 threads=args.threads, deterministic=args.deterministic)
    options = RunOptions(output=output, results=Path(args.results or DEFAULT_RESULTS / suite.name), env=env,
                         workers=1 if args.workers is None else args.workers, rerun=args.rerun,
                         tracking=not args.no_tracking, tracking_uri=args.tracking_uri,
                         tracking_optional=args.tracking_optional, progress=not args.no_progress,
                         cells_per_gpu=args.cells_per_gpu, reference=suite.reference)
    if args.dry_run or args.executor == "dask":
        check_inputs(cells, options)  # bad input stops before a cluster starts
    if args.dry_run:
        _print_grid(suite, cells, output)
        return 0
    with _dask_cluster(args, [("--output", output)]) as cluster:
        if cluster is not None:  # every cell submitted: Dask queues them and places them by resources
            options = dataclasses.replace(options, executor=cluster,
                                          workers=len(cells) if args.workers is None else args.workers)
        done = run_suite(suite, cells, options)
    summary = done.summary
    print(f"\n{suite.name}: {len(summary.completed)} completed, {len(summary.skipped)} already done, "
          f"{len(summary.failed)} failed in {summary.seconds:.0f} s")
    for cell_id, reason in summary.failed.items():
        print(f"  FAILED {cell_id}: {reason} (see {output / 'cells' / cell_id / 'status.json'})")
    if done.tables is not None:
        print("\n" + done.tables["markdown"])
        print(f"Tables and plot: {options.results}/")
    else:  # every cell failed: that is exit code 1, not a table error (2)
        print("No completed cell, so no tables.")
    print(f"Cell folders: {output / 'cells'}/")
    if done.mirrored:
        print(f"MLflow: mirrored {len(done.mirrored)} earlier cell(s) that it lacked")
    if done.tracking_error:
        print(f"MLflow: tracking failed ({done.tracking_error}); not in MLflow: {', '.join(done.untracked) or 'none'}; "
              f"run `sqvae-bench sync {output}` to mirror them")
    if done.tracking_uri is not None:
        print(f"MLflow: {ui_command(done.tracking_uri)}")
    return summary.exit_code


def cmd_sync(args) -> int:
    from bench.lock import OutputLock
    from bench.mirror import Mirror, open_tracker, suite_names
    from bench.tracking import resolve_tracking_uri, ui_command

    output = Path(args.output)
    if not (output / "cells").is_dir():
        raise ConfigError(f"{output} holds no run (expected {output / 'cells'}/)")
    uri = resolve_tracking_uri(args.tracking_uri, output)
    with OutputLock(output):
        for name in suite_names(output):
            mirror = Mirror(open_tracker(uri, f"sqvae-bench/{name}"), name, output)
            mirror.end_stale()
            mirrored = mirror.sync()
            if mirror.error:
                raise ConfigError(f"MLflow sync of {output} failed: {mirror.error}")
            print(f"{name}: mirrored {len(mirrored)} cell(s) into MLflow")
    print(f"MLflow: {ui_command(uri)}")
    return 0


def _only_pairs(text: str | None) -> tuple[tuple[str, str], ...] | None:
    """--only for studies: dataset=... and model=... select (dataset, model) pairs; seeds do not apply."""
    from bench.suite import parse_only

    selection = parse_only(text)
    if "seed" in selection:
        raise ConfigError("--only: a study selects datasets and models, not seeds (trials use the study's seed)")
    if not selection:
        return None
    return tuple(("*" if "dataset" not in selection else d, "*" if "model" not in selection else m)
                 for d in selection.get("dataset", {"*"}) for m in selection.get("model", {"*"}))


def cmd_tune(args) -> int:
    from bench.run import RunEnv
    from bench.study import describe, load_study
    from bench.study import pairs as study_pairs
    from bench.tracking import ui_command
    from bench.tune import TuneOptions, check_inputs, dashboard_command, storage_url, tune

    _check_executor_args(args, "tune")
    study = load_study(args.study)
    wanted = _only_pairs(args.only)
    pairs = None if wanted is None else tuple(
        p for p in study_pairs(study) if any(w[0] in ("*", p[0]) and w[1] in ("*", p[1]) for w in wanted))
    env = RunEnv(device=args.device, data_root=args.data_root, download=args.download, fid_weights=args.fid_weights,
                 lpips_weights=args.lpips_weights,
                 threads=args.threads, deterministic=args.deterministic)
    options = TuneOptions(output=Path(args.output or DEFAULT_RUNS / f"study-{study.name}"),
                          results=Path(args.results or DEFAULT_RESULTS / f"study-{study.name}"), env=env,
                          workers=1 if args.workers is None else args.workers, storage=args.storage, pairs=pairs,
                          search=not args.final_only,
                          final=not args.search_only, untuned=Path(args.untuned) if args.untuned else None,
                          tracking=not args.no_tracking, tracking_uri=args.tracking_uri,
                          tracking_optional=args.tracking_optional, progress=not args.no_progress)
    if args.final_only and args.search_only:
        raise ConfigError("--final-only and --search-only exclude each other")
    if args.dry_run or args.executor == "dask":
        check_inputs(study, options)  # bad input stops before a cluster starts
    if args.dry_run:
        print(describe(study))
        print(f"storage: {storage_url(options)}\noutput: {options.output}\nresults: {options.results}")
        return 0
    folders = [("--output", options.output)]
    if args.storage and "://" not in args.storage and Path(args.storage).parent != options.output:
        folders.append(("--storage", Path(args.storage).parent))  # a journal file the workers must see too
    with _dask_cluster(args, folders) as cluster:
        if cluster is not None:  # as many trials at once as the cluster runs, so each is asked with the latest results
            options = dataclasses.replace(options, executor=cluster,
                                          workers=cluster.slots() if args.workers is None else args.workers)
        done = tune(study, options)
    print(f"\n{study.name}: search of {len(done.pairs)} (dataset, model) pairs, {study.trials} trials each "
          f"({', '.join(study.objective)}), {done.seconds:.0f} s in all")
    for pair in done.pairs:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(pair.counts.items()))
        best = "no completed trial" if pair.best_number is None else (
            f"best trial {pair.best_number}: {', '.join(f'{v:.6g}' for v in pair.best_values)} with "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in pair.best_params.items()))
        print(f"  {pair.dataset}/{pair.model}: {counts}; {best}")
    if done.final is not None:
        summary = done.final.summary
        print(f"\nfinal stage ({done.tuned_suite}): {len(summary.completed)} completed, {len(summary.skipped)} "
              f"already done, {len(summary.failed)} failed")
        for cell_id, reason in summary.failed.items():
            print(f"  FAILED {cell_id}: {reason}")
        if done.final.tables is not None:
            print("\n" + done.final.tables["markdown"])
    print(f"Tables, tuned.yaml and plots: {options.results}/")
    print(f"Optuna: {dashboard_command(done.storage)}")
    if done.tracking_error:
        print(f"MLflow: tracking failed ({done.tracking_error})")
    if done.tracking_uri is not None:
        print(f"MLflow: {ui_command(done.tracking_uri)}")
    return done.exit_code


def _print_grid(suite, cells, output: Path) -> None:
    from bench import store

    print(f"suite {suite.name} ({suite.source}): {len(cells)} cells -> {output}")
    for cell in cells:
        try:
            status = store.read_status(store.cell_dir(output, cell.cell_id))["status"]
        except StoreError:  # `run` sets the file aside and redoes the cell
            status = "unreadable"
        opts = cell.config.model_options
        print(f"  {cell.cell_id:60s} {status:9s} K={opts['size_dict']} d={opts['dim_dict']} "
              f"epochs={cell.config.train.epochs} max_steps={cell.config.train.max_steps}")


def cmd_show(args) -> int:
    import json

    from bench.study import describe, is_study, load_study

    if is_study(args.suite):  # a study file, or a shipped study's name that no suite has
        if args.only or args.json:
            raise ConfigError("show STUDY takes no --only or --json (they select and print a suite's cells)")
        print(describe(load_study(args.suite)))
        return 0
    suite, cells = _suite_parts(args)
    if args.json:
        print(json.dumps([{"cell_id": c.cell_id, **c.config.to_dict()} for c in cells], indent=2))
    else:
        _print_grid(suite, cells, Path(args.output or DEFAULT_RUNS / suite.name))
    return 0


def cmd_table(args) -> int:
    from bench.checks import check_results_dir
    from bench.tables import write_tables

    output, name, cell_ids, suite_metrics, suite_reference = _table_source(args)
    results = Path(args.results or DEFAULT_RESULTS / name)
    check_results_dir(results)
    metrics = args.metrics.split(",") if args.metrics else suite_metrics
    written = write_tables(output, results, baseline=args.baseline, metrics=metrics,
                           reference=args.reference or suite_reference, cell_ids=cell_ids)
    print(written["markdown"])
    print(f"\nWritten to {results}/")
    return 0


def _table_source(args) -> tuple[Path, str, list[str] | None, list[str] | None, Path | None]:
    """(run folder, name for the results folder, cell ids, suite metrics, suite reference file) of `table`'s target.

    The target is a run folder (holding cells/) or a suite; any other folder is an error.
    """
    from bench.suite import expand, load_suite

    target = Path(args.target)
    if target.is_dir():
        if not (target / "cells").is_dir():
            raise ConfigError(f"{target} holds no run (no {target / 'cells'}/ folder): give a run folder "
                              "(the --output of `run`) or a suite")
        return target, target.name, None, None, None
    suite = load_suite(args.target)
    output = Path(args.output or DEFAULT_RUNS / suite.name)
    if not (output / "cells").is_dir():
        raise ConfigError(f"no results in {output} (expected {output / 'cells'}/); run the suite first")
    return output, suite.name, [cell.cell_id for cell in expand(suite)], list(suite.metrics) or None, suite.reference


def cmd_list(args) -> int:
    from bench.data import dataset_names
    from bench.metrics import METRICS
    from bench.models import MODELS
    from bench.study import shipped_studies
    from bench.suite import shipped_suites

    sections = {
        "models": [f"{n:14s} {MODELS.get(n).description}" for n in MODELS.names()],
        "datasets": dataset_names(),
        "suites": shipped_suites(),
        "studies": shipped_studies(),
        "metrics": [f"{n:17s} {'higher' if METRICS.get(n).higher_is_better else 'lower '} is better  "
                    f"{METRICS.get(n).description}" for n in METRICS.names()],
    }
    for name in [args.what] if args.what else sections:
        print(f"{name}:")
        for line in sections[name]:
            print(f"  {line}")
    return 0


def cmd_perf(args) -> int:
    from bench.checks import check_device
    from bench.perf import measure

    check_device(args.device)
    if args.executor_overhead:
        _executor_overhead(args)
        return 0
    if args.trial:
        from bench.perf import measure_trial

        cost = measure_trial(args.study, repeats=args.repeats, device=args.device)
        print(f"study {cost.study}, {cost.dataset}/{cost.model} (median of {args.repeats}):")
        print(f"  as a suite cell (fit, test, pictures): {cost.cell_s:7.2f} s")
        print(f"  as an Optuna trial (fit, pruning):     {cost.trial_s:7.2f} s")
        print(f"  ratio trial / cell:                    {cost.ratio:7.3f}")
        return 0
    if args.compile:
        from bench.perf import measure_compile

        comp = measure_compile(args.model, args.dataset, batch_size=args.batch_size, steps=args.steps,
                               repeats=args.repeats, device=args.device, precision=args.precision)
        print(f"{comp.model} on {comp.dataset}, batch {comp.batch_size}, {comp.device}, bare train step:")
        print(f"  eager:         {comp.eager_step_s * 1e3:9.1f} ms")
        print(f"  compiled:      {comp.compiled_step_s * 1e3:9.1f} ms  ({comp.speedup:.2f}x eager's speed)")
        print(f"  cold compile:  {comp.compile_s:9.1f} s")
        return 0
    result = measure(args.model, args.dataset, batch_size=args.batch_size, steps=args.steps, repeats=args.repeats,
                     device=args.device, precision=args.precision)
    print(f"{result.model} on {result.dataset}, batch {result.batch_size}, {result.device}:")
    print(f"  trainer step: {result.trainer_images_per_s:9.1f} images/s")
    print(f"  bare step:    {result.bare_images_per_s:9.1f} images/s")
    print(f"  ratio:        {result.ratio:9.3f}")
    return 0


def _executor_overhead(args) -> None:
    from bench.dask_executor import require_dask
    from bench.overhead import measure_executor_overhead

    require_dask()
    cost = measure_executor_overhead(workers=2, repeats=args.repeats, device=args.device)
    rows = [(f"local pool (--workers {cost.workers}):", f"{cost.local_s:7.2f} s"),
            (f"Dask LocalCluster (--dask-workers {cost.workers}):",
             f"{cost.dask_s:7.2f} s (its start included: {cost.cluster_start_s:.2f} s)"),
            ("ratio dask / local:", f"{cost.ratio:7.3f}")]
    print(f"{cost.cells} tiny cells on {cost.workers} workers, makespan (median of {args.repeats}):")
    for label, value in rows:
        print(f"  {label:40s}{value}")
    print(f"  same numbers: {'yes' if cost.same_numbers else 'NO'}")


def _execution_args(parser: argparse.ArgumentParser) -> None:
    """Where and how cells and trials run, and where they are tracked (shared by `run` and `tune`)."""
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite in --output)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("--tracking-optional", action="store_true",
                        help="if the tracking store cannot be reached, run without it (said once; `sync` mirrors later)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op CPU threads per cell (default 1); part of the numerical path, recorded in env.json")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                        help="PyTorch deterministic algorithms, cuDNN deterministic mode (default on)")
    parser.add_argument("--device", default="auto", help="auto (GPUs round-robin, else CPU), cpu, cuda, cuda:1 ...")
    parser.add_argument("--data-root", help="dataset root (default $SQVAE_BENCH_DATA or ./data)")
    parser.add_argument("--download", action="store_true", help="download datasets that can be downloaded")
    parser.add_argument("--fid-weights", help="Inception weights file for FID (default $SQVAE_BENCH_INCEPTION_WEIGHTS or torch hub cache)")
    parser.add_argument("--lpips-weights", help="AlexNet weights file for LPIPS (default $SQVAE_BENCH_LPIPS_WEIGHTS or "
                        "torch hub cache; without them LPIPS is null with one warning)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--executor", choices=["local", "dask"], default="local",
                        help="local: worker processes on this machine (default); dask: tasks on a Dask cluster "
                        "(--scheduler or --dask-workers; see README, Running on a cluster)")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="with --executor dask: a running Dask scheduler "
                        "(tcp://host:8786); outputs must be on a filesystem every worker sees")
    parser.add_argument("--dask-workers", type=int, metavar="N",
                        help="with --executor dask: start a local Dask cluster of N one-thread worker processes "
                        "for this run (closed after it)")
    parser.add_argument("--cells-per-gpu", type=int, metavar="K",
                        help="K cells share one GPU (these models leave a GPU mostly idle); local pool: at most "
                        "GPUs x K at once; Dask: each task asks for 1/K of a worker's GPU resource (default 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sqvae-bench", description="SQ-VAE vs VQ-VAE benchmark harness")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite (skips completed cells, resumes interrupted ones)")
    run.add_argument("suite", help="suite file, or the name of a shipped suite (see `list suites`)")
    run.add_argument("--workers", type=int, help="cells at a time (default 1; with --executor dask, every cell "
                     "is submitted and the cluster decides)")
    run.add_argument("--output", help="run folder (default runs/<suite>)")
    run.add_argument("--results", help="table folder (default results/<suite>)")
    run.add_argument("--dry-run", action="store_true", help="print the resolved grid and exit")
    run.add_argument("--only", help="select cells, e.g. dataset=shapes,model=vqvae+sqvae-gauss-1")
    run.add_argument("--rerun", action="store_true", help="run completed cells again (old folders move to replaced/)")
    _execution_args(run)
    run.set_defaults(func=cmd_run)

    show = sub.add_parser("show", help="print a suite's resolved grid, or a study's spaces and budgets")
    show.add_argument("suite")
    show.add_argument("--only")
    show.add_argument("--output", help="run folder, to show each cell's status")
    show.add_argument("--json", action="store_true", help="print every resolved cell config as JSON")
    show.set_defaults(func=cmd_show)

    table = sub.add_parser("table", help="aggregate results into Markdown, LaTeX, CSV and a plot")
    table.add_argument("target", help="a suite (file or name) or a run folder")
    table.add_argument("--output", help="run folder of the suite (default runs/<suite>)")
    table.add_argument("--results", help="where to write (default results/<suite>)")
    table.add_argument("--baseline", help="model for the paired test (default vqvae when present)")
    table.add_argument("--metrics", help="comma-separated metric names")
    table.add_argument("--reference", help="CSV of published numbers: dataset,model,metric,value[,source] "
                       "(default: the suite's `reference:` file)")
    table.set_defaults(func=cmd_table)

    tune = sub.add_parser("tune", help="run an Optuna study: equal-budget search on validation, then the final stage")
    tune.add_argument("study", help="study file, or the name of a shipped study (see `list studies`)")
    tune.add_argument("--workers", type=int, help="trials (and final cells) at a time (default 1; with "
                      "--executor dask, the cluster's task slots)")
    tune.add_argument("--output", help="run folder (default runs/study-<study>): storage, trials, final cells")
    tune.add_argument("--results", help="table folder (default results/study-<study>): table, tuned.yaml, plots")
    tune.add_argument("--storage", help="Optuna storage: a journal file path, or a database URL (default: a journal "
                      "file in --output)")
    tune.add_argument("--dry-run", action="store_true", help="print the resolved spaces and budgets and exit")
    tune.add_argument("--only", help="select pairs, e.g. dataset=shapes,model=vqvae+sqvae-gauss-1")
    tune.add_argument("--final-only", action="store_true", help="skip the search: retrain the best trials found so far")
    tune.add_argument("--search-only", action="store_true", help="search, without the final stage")
    tune.add_argument("--untuned", help="run folder of the untuned suite, shown beside the tuned table with the difference")
    _execution_args(tune)
    tune.set_defaults(func=cmd_tune)
    sync = sub.add_parser("sync", help="mirror every finished cell folder that MLflow lacks into MLflow")
    sync.add_argument("output", help="a run folder (the --output of `run`)")
    sync.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite in the folder)")
    sync.set_defaults(func=cmd_sync)

    lst = sub.add_parser("list", help="list models, datasets, suites and metrics")
    lst.add_argument("what", nargs="?", choices=["models", "datasets", "suites", "metrics", "studies"])
    lst.set_defaults(func=cmd_list)

    perf = sub.add_parser("perf", help="images/s of the trainer step against the bare step")
    perf.add_argument("--model", default="sqvae-gauss-1")
    perf.add_argument("--dataset", default="shapes")
    perf.add_argument("--batch-size", type=int, default=32)
    perf.add_argument("--steps", type=int, default=50)
    perf.add_argument("--repeats", type=int, default=3)
    perf.add_argument("--device", default="auto")
    perf.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    perf.add_argument("--compile", action="store_true",
                      help="time the bare train step eager vs torch.compile'd, and the cold compile")
    perf.add_argument("--trial", action="store_true",
                      help="instead: wall time of a study's configuration as an Optuna trial against a suite cell")
    perf.add_argument("--study", default="smoke", help="with --trial: the study whose first configuration is timed")
    perf.add_argument("--executor-overhead", action="store_true",
                      help="instead: makespan of 8 tiny cells on a 2-worker Dask LocalCluster against the local pool")
    perf.set_defaults(func=cmd_perf)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from bench.plugins import load_plugins

        load_plugins()
        return args.func(args)
    except BenchError as err:  # ConfigError, DataError, ...: the user's to fix
        print(f"sqvae-bench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nsqvae-bench: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
