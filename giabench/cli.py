"""The ``giabench`` command line. Bad input exits with code 2 and one line naming the problem; a run with failed cells
exits 1; Ctrl-C (or SIGTERM) stops cleanly with 130 (143), keeping every finished cell and writing their leaderboard."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

from giabench.errors import ConfigError, GiabenchError

EXIT_BAD_INPUT = 2
EXIT_FAILED_CELLS = 1
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
THREADS_HELP = ("CPU threads per cell, in-process and in every worker (default: 1); a numerics setting, stored with "
                "every result: a run folder holds one setting only")


def _parser() -> argparse.ArgumentParser:
    from giabench import __version__

    parser = argparse.ArgumentParser(prog="giabench", description="Gradient inversion attacks and defenses in FL.")
    parser.add_argument("--version", action="version", version=f"giabench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite (default: the packaged 'default' suite) and write the leaderboard")
    run.add_argument("suite", nargs="?", default="default", help="a packaged suite name or a YAML file")
    run.add_argument("--out", help="run folder (default: runs/SUITE); rerunning resumes it")
    run.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="where cells run (default: cpu)")
    run.add_argument("--workers", type=int, default=1, help="cells run in parallel processes (default: 1)")
    run.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    run.add_argument("--data-root", default="", help="folder of real datasets (cifar10, mnist, ...)")
    run.add_argument("--download", action="store_true", help="allow torchvision to download missing datasets")
    run.add_argument("--retry-failed", action="store_true", help="run the cells stored as failed again")
    run.add_argument("--executor", default="local", choices=["local", "ray"],
                     help="local: in-process or --workers processes (default); ray: one Ray task per cell")
    run.add_argument("--address", help="with --executor ray: the cluster to join (auto, or HOST:PORT); default: a "
                                       "local Ray instance on loopback")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    lister = sub.add_parser("list", help="list registered components")
    lister.add_argument("kind", choices=["attacks", "defenses", "datasets", "models", "suites"],
                        help="which registry to list")

    board = sub.add_parser("leaderboard", help="write leaderboard.csv and leaderboard.html for a run folder")
    board.add_argument("run_dir", help="a run folder written by giabench run")
    board.add_argument("--utility", help="a utility.csv from giabench utility: adds the privacy-utility table and plot "
                                         "(default: the run's own utility/utility.csv when its suite has one)")

    compare = sub.add_parser("compare", help="per setting, what changed between two run folders (means over seeds, "
                                             "flagged where the change exceeds the gate's tolerance)")
    compare.add_argument("run_a", help="the run folder before the change")
    compare.add_argument("run_b", help="the run folder after the change")
    compare.add_argument("--csv", help="also write the full comparison to this CSV file")

    show = sub.add_parser("show", help="print one cell's config and scores")
    show.add_argument("cell", help="a cell id (or a unique prefix of one)")
    show.add_argument("--runs", default="runs", help="folder of run folders to search (default: runs)")

    audit = sub.add_parser("audit", help="how much YOUR model leaks: the attacks that apply to it, under your "
                                         "protocol, batch sizes and defenses; verdicts per threat model")
    audit.add_argument("--model", required=True, help="MODULE:FUNCTION returning your torch.nn.Module (imported from "
                                                      "the current folder or the Python path; no pickle)")
    audit.add_argument("--weights", default="", help="a state dict of tensors for it (loaded with weights_only=True)")
    audit.add_argument("--data", default="cifar10-sample", help="dataset name or folder:PATH (default: cifar10-sample)")
    audit.add_argument("--protocol", default="fedsgd", choices=["fedsgd", "fedavg"], help="default: fedsgd")
    audit.add_argument("--epochs", type=int, default=1, help="FedAvg local epochs (default: 1)")
    audit.add_argument("--local-batch", type=int, default=0, help="FedAvg local batch size (0: the whole batch)")
    audit.add_argument("--lr", type=float, default=0.1, help="FedAvg local learning rate (default: 0.1)")
    audit.add_argument("--batch-sizes", default="1,8", help="client batch sizes, comma-separated (default: 1,8)")
    audit.add_argument("--defenses", default="none,dp-sgd:noise_multiplier=1",
                       help="defense settings, comma-separated, NAME:KEY=VALUE;KEY=VALUE (default: none and DP-SGD "
                            "at noise multiplier 1)")
    audit.add_argument("--budget", default="standard", choices=["quick", "standard", "thorough"],
                       help="attack iterations, seeds and utility rounds (default: standard)")
    audit.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="where cells run")
    audit.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    audit.add_argument("--workers", type=int, default=1, help="cells run in parallel processes (default: 1)")
    audit.add_argument("--out", required=True, help="the audit's run folder (resumable)")
    audit.add_argument("--quiet", action="store_true", help="no progress bars")

    regress = sub.add_parser("regress", help="run a suite and judge it, setting by setting, against a baseline CSV "
                                             "(attacks weaker, defenses leakier, costs changed)")
    regress.add_argument("--suite", default="smoke", help="a packaged suite name or a YAML file (default: smoke)")
    regress.add_argument("--baseline", required=True, help="the baseline CSV (per-setting summary) to judge against")
    regress.add_argument("--out", help="run folder (default: a fresh temporary folder, so that nothing is reused)")
    regress.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                         help="where cells run (default: cpu)")
    regress.add_argument("--workers", type=int, default=1, help="cells run in parallel processes (default: 1)")
    regress.add_argument("--executor", default="local", choices=["local", "ray"], help="as for giabench run")
    regress.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    regress.add_argument("--update", action="store_true", help="write the run's per-setting summary as the baseline")
    regress.add_argument("--quiet", action="store_true", help="no progress bars")
    util = sub.add_parser("utility", help="short federated training under each defense of a utility YAML file: "
                                          "accuracy, uplink bytes and time per round, written to OUT/utility.csv")
    util.add_argument("config", help="a utility YAML file (see benchmarks/utility.yaml)")
    util.add_argument("--out", default="runs/utility", help="output folder (default: runs/utility)")
    util.add_argument("--data-root", default="", help="folder of real datasets, for torchvision ones such as cifar10")
    util.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    util.add_argument("--quiet", action="store_true", help="no progress bars")
    gan = sub.add_parser("train-generator", help="train a DCGAN image prior for the generative attacks; writes "
                                                 "OUT (.pt), OUT's .json (config, sha256) and sample grids")
    gan.add_argument("--dataset", required=True, help="a dataset name, e.g. mnist-5k or natural-patches")
    gan.add_argument("--out", required=True, help="checkpoint path ending in .pt")
    gan.add_argument("--epochs", type=int, default=20, help="passes over the dataset (default: 20)")
    gan.add_argument("--batch", type=int, default=64, help="images per step (default: 64)")
    gan.add_argument("--lr", type=float, default=2e-4, help="Adam step size of both networks (default: 2e-4)")
    gan.add_argument("--latent-dim", type=int, default=64, help="size of the latent vector z (default: 64)")
    gan.add_argument("--width", type=int, default=64, help="channels of the widest layer (default: 64)")
    gan.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    gan.add_argument("--threads", type=int, default=2, help="CPU threads (recorded: results depend on it)")
    gan.add_argument("--grid-every", type=int, default=5, help="write a sample grid every N epochs")
    gan.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def cmd_train_generator(args) -> int:
    from giabench.attacks.generators import training

    if not args.out.endswith(".pt"):
        raise ConfigError(f"--out {args.out}: the checkpoint path must end in .pt")
    for name in ("epochs", "batch", "latent_dim", "width", "threads", "grid_every"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    meta = training.train(args.dataset, args.out, epochs=args.epochs, batch=args.batch, lr=args.lr,
                          latent_dim=args.latent_dim, width=args.width, seed=args.seed, threads=args.threads,
                          grid_every=args.grid_every, show_progress=not args.quiet)
    print(f"wrote {args.out} (sha256 {meta['sha256']}) and {Path(args.out).with_suffix('.json')}; "
          f"final losses {meta['final_losses']}")
    return 0


def cmd_utility(args) -> int:
    from giabench import utility

    cfg = utility.load_config(args.config)
    cfg.data_root = args.data_root or cfg.data_root
    frame = utility.run(cfg, args.out, show_progress=not args.quiet, threads=args.threads)
    columns = ["defense", "defense_params", "accuracy", "bytes_per_round", "wall_per_round_s", "epsilon", "adjacency"]
    print(frame[columns].to_string(index=False))
    print(f"wrote {Path(args.out) / 'utility.csv'}")
    return 0


def _leaderboard(run_dir: Path, title: str, utility: str | None = None) -> str:
    """Write the leaderboard files of ``run_dir`` and return the ranking as text, followed by what was written; a
    file that cannot be written (a read-only folder) is a warning, the ranking is still returned."""
    from giabench.leaderboard import plots, report, tables, tradeoff

    frame = tables.cells(run_dir)
    if frame.empty:
        raise GiabenchError(f"{run_dir}: no finished cells yet")
    if utility is None and (run_dir / "utility" / "utility.csv").is_file():  # the suite's own utility section
        utility = str(run_dir / "utility" / "utility.csv")
    try:
        tables.write_csv(frame, run_dir / "leaderboard.csv")
        trade = None
        if utility:
            trade = tradeoff.table(frame, tradeoff.read_utility(utility))
            tables.write_csv(trade, run_dir / "privacy_utility.csv")
            figure = plots.privacy_utility(report.utility_points(trade))
            if figure:
                (run_dir / "privacy_utility.svg").write_text(figure, encoding="utf-8")
        report.write(frame, run_dir, run_dir / "leaderboard.html", title=title, tradeoff=trade)
        written = f"\n\nwrote {run_dir / 'leaderboard.csv'} and {run_dir / 'leaderboard.html'}"
    except OSError as exc:
        print(f"giabench: warning: cannot write the leaderboard in {run_dir} ({exc.strerror})", file=sys.stderr)
        written = ""
    return tables.terminal(tables.ranking(frame)) + written


def _suite_utility(cfg, folder: Path, threads: int, show_progress: bool) -> None:
    """A suite's utility section, trained once per configuration (``folder/config.json`` records it)."""
    from giabench import utility

    record = folder / "config.json"
    if (folder / "utility.csv").is_file() and record.is_file() and \
            record.read_text(encoding="utf-8") == utility.fingerprint(cfg):
        return
    utility.run(cfg, folder, show_progress=show_progress, threads=threads)
    record.write_text(utility.fingerprint(cfg), encoding="utf-8")


def _out_dir(out: str | None, default: Path) -> Path:
    if out is None:
        return default
    if not out.strip():
        raise GiabenchError("--out must name a folder, got an empty string")
    return Path(out)


def _check_parallelism(env, workers: int) -> None:
    from giabench import numerics

    numerics.settings(env.device, env.threads)
    if workers < 1:
        raise GiabenchError("--workers must be at least 1")


def cmd_run(args) -> int:
    from giabench import runner, suite
    from giabench.store import DB_NAME, Store

    loaded = suite.load(args.suite)
    env = runner.Environment(runner.pick_device(args.device), args.data_root, args.download, args.threads)
    _check_parallelism(env, args.workers)
    out = _out_dir(args.out, Path("runs") / loaded.slug)
    stopped = None
    with _StopOnSignals() as caught:
        try:
            runner.run_suite(loaded, out, env, workers=args.workers, show_progress=not args.quiet,
                             retry_failed=args.retry_failed, executor=args.executor, address=args.address)
            if loaded.utility is not None:
                _suite_utility(loaded.utility, out / "utility", args.threads, not args.quiet)
        except KeyboardInterrupt:
            stopped = caught.get("signal", signal.SIGINT)
    cells = Store(out).cells() if (out / DB_NAME).is_file() else None
    cells = cells[cells["cell"].isin([c.id for c in loaded.cells])] if cells is not None else []
    if len(cells):
        print(_leaderboard(out, f"giabench: {loaded.name}"))
    if stopped is not None:
        print(f"giabench: interrupted: {len(cells)} of {len(loaded.cells)} cells finished and stored in {out}; "
              "rerun the same command to resume", file=sys.stderr)
        return EXIT_SIGNAL[stopped]
    failed = cells[cells["status"] == "failed"] if len(cells) else []
    if len(failed):
        print(f"giabench: {len(failed)} of {len(cells)} cells failed (status 'failed', the reason in 'note', e.g. "
              f"{failed['note'].iloc[0]!r}); rerun with --retry-failed", file=sys.stderr)
        return EXIT_FAILED_CELLS
    return 0


class _StopOnSignals:
    """Within the block SIGTERM raises KeyboardInterrupt like Ctrl-C does; the mapping it yields records which."""

    def __enter__(self) -> dict:
        self.caught: dict = {}
        self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self.caught

    def _handle(self, signum, frame):
        self.caught["signal"] = signal.Signals(signum)
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self.previous)


def _summary(doc: str, width: int = 150) -> str:
    """The first paragraph of a docstring on one line, shortened to ``width`` characters."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return paragraph if len(paragraph) <= width else paragraph[: width - 3].rstrip() + "..."


def cmd_list(args) -> int:
    from giabench import suite, threats
    from giabench.registry import registry

    if args.kind == "suites":
        for name in suite.packaged_suites():
            print(f"{name:16s} {suite.load(name).description}")
        return 0
    reg = registry(args.kind)
    for name in reg.names():
        obj = reg.get(name)
        doc = _summary(obj.__doc__ or "")
        meta = ""
        if args.kind == "attacks":
            needs = obj(**{k: v for k, v in reg.defaults(name).items()}).requirements("fedsgd")
            meta = f"[{obj.family}; threat model {threats.minimal(needs)} by default; assumes {obj.assumes}] "
        params = ", ".join(f"{k}={v!r}" for k, v in reg.defaults(name).items())
        print(f"{name:16s} {meta}{doc}\n{'':16s} parameters: {params or 'none'}")
    return 0


def cmd_leaderboard(args) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise GiabenchError(f"{run_dir}: no such run folder")
    print(_leaderboard(run_dir, f"giabench: {run_dir.name}", args.utility))
    return 0


def cmd_compare(args) -> int:
    from giabench.leaderboard import compare, tables

    for folder in (args.run_a, args.run_b):
        if not Path(folder).is_dir():
            raise GiabenchError(f"{folder}: no such run folder")
    table = compare.compare(tables.cells(args.run_a), tables.cells(args.run_b))
    print(compare.terminal(table))
    changed = int((table["changed"] != "").sum())
    print(f"\ncompare: {len(table)} settings, {changed} changed beyond the gate's tolerance")
    if args.csv:
        tables.write_csv(table, args.csv)
        print(f"wrote {args.csv}")
    return 0


def cmd_show(args) -> int:
    from giabench.store import Store

    matches = []
    for db in sorted(Path(args.runs).glob("*/results.sqlite")):
        try:
            frame = Store(db.parent, create=False).cells()
        except GiabenchError as exc:  # one broken run folder must not hide the others
            print(f"giabench: warning: skipping {exc}", file=sys.stderr)
            continue
        for _, row in frame[frame["cell"].str.startswith(args.cell)].iterrows():
            matches.append((db.parent, row))
    if not matches:
        raise GiabenchError(f"no cell {args.cell!r} in {args.runs}/*/results.sqlite")
    if len({row['cell'] for _, row in matches}) > 1:
        raise GiabenchError(f"cell prefix {args.cell!r} is ambiguous; give more characters")
    run_dir, row = matches[0]
    print(f"cell {row['cell']} in {run_dir}")
    print(json.dumps(json.loads(row["config"]), indent=2))
    for key in ("psnr", "ssim", "lpips", "mse", "label_acc", "exact", "epsilon", "delta", "adjacency", "bytes",
                "iterations", "wall_s", "device", "threads", "dtype", "hardware", "versions", "image", "status", "note",
                "extra"):
        print(f"{key:10s} {row[key]}")
    return 0


def cmd_regress(args) -> int:
    from giabench import runner, suite
    from giabench.leaderboard import regress, tables

    loaded = suite.load(args.suite)
    baseline = None if args.update else regress.read_baseline(args.baseline)
    env = runner.Environment(runner.pick_device(args.device), threads=args.threads)
    _check_parallelism(env, args.workers)
    with tempfile.TemporaryDirectory(prefix="giabench-regress-") as scratch:
        out = Path(args.out or scratch)
        runner.run_suite(loaded, out, env, workers=args.workers, show_progress=not args.quiet, executor=args.executor)
        frame = tables.cells(out)
    summary = regress.summarize(frame[frame["cell"].isin([c.id for c in loaded.cells])])
    if args.update:
        regress.check_baseline(summary)
        regress.write_baseline(summary, args.baseline)
        print(f"wrote baseline {args.baseline} ({len(summary)} settings, {int(summary['cells'].sum())} cells)")
        return 0
    failures, notes = regress.compare(summary, baseline)
    for line in notes:
        print(f"NOTE {line}")
    for line in failures:
        print(f"REGRESSION {line}")
    print(f"regress: {len(baseline)} baseline settings ({int(baseline['cells'].sum())} cells), "
          f"{len(failures)} regressions")
    return 1 if failures else 0


def cmd_audit(args) -> int:
    import os

    from giabench import audit, data, models, suite
    from giabench.leaderboard import plots, tables
    from giabench.store import Store
    from giabench.utility import UtilityConfig

    sizes = args.batch_sizes.split(",")
    if not all(s.strip().isdigit() and int(s) >= 1 for s in sizes):
        raise GiabenchError(f"--batch-sizes: expected whole numbers >= 1 separated by commas, got {args.batch_sizes!r}")
    sizes = sorted({int(s) for s in sizes})
    if os.getcwd() not in sys.path:  # the user's module sits beside them, as for python -m
        sys.path.insert(0, os.getcwd())
    imageset = data.load(args.data)
    model = {"name": "factory", "factory": args.model, **({"weights": args.weights} if args.weights else {})}
    net = models.build("factory", {k: v for k, v in model.items() if k != "name"}, imageset, "untrained", 0).net
    protocol = {"name": "fedsgd"} if args.protocol == "fedsgd" else \
        {"name": "fedavg", "epochs": args.epochs, "batch_size": args.local_batch, "lr": args.lr}
    entries, skipped = audit.battery(net, imageset.shape, protocol, sizes, args.budget)
    document = audit.suite_document("audit", args.data, model, protocol, audit.parse_defenses(args.defenses),
                                    entries, args.budget)
    out = _out_dir(args.out, Path(args.out))
    out.mkdir(parents=True, exist_ok=True)
    suite_file = out / "audit-suite.yaml"
    audit.dump_suite(document, suite_file)
    code = cmd_run(argparse.Namespace(suite=str(suite_file), out=str(out), device=args.device, threads=args.threads,
                                      workers=args.workers, data_root="", download=False, retry_failed=False,
                                      executor="local", address=None, quiet=args.quiet))
    ids = {cell.id for cell in suite.load(str(suite_file)).cells}  # an earlier audit in this folder is left out
    cells, images = tables.cells(out), Store(out).images()
    cells, images = cells[cells["cell"].isin(ids)], images[images["cell"].isin(ids)]
    utility = document["utility"]
    note = (f"Accuracy: {utility['rounds']} FedAvg rounds of {utility['clients']} clients on {args.data} "
            f"(test images: {round(UtilityConfig.test_fraction * len(imageset))}); epsilon (utility run) composes "
            "every round of that run.")
    cells = cells.assign(local_steps=[audit.local_steps(row) for _, row in cells.iterrows()])
    figures = {"leakage_batch.svg": plots.leakage(audit.leakage_curves(cells, "batch_size"), "batch_size",
                                                  "client batch size", "Leakage against batch size"),
               "leakage_steps.svg": plots.leakage(audit.leakage_curves(cells, "local_steps"), "local_steps",
                                                  "local gradient steps per update", "Leakage against local steps")}
    lines = audit.verdicts(cells, images)
    table = audit.defense_table(cells, images, audit.utility_costs(out / "utility" / "utility.csv"))
    report = audit.write_report(out, suite_file, lines, skipped, table, figures, note)
    print("\n".join(["", "verdicts (weakest attacker first):", *(f"  {line}" for line in lines),
                      *(f"  not applicable: {attack}: {reason}" for attack, reason in skipped),
                      f"wrote {report} and {suite_file}"]))
    return code


COMMANDS = {"run": cmd_run, "audit": cmd_audit, "list": cmd_list, "leaderboard": cmd_leaderboard, "show": cmd_show,
            "compare": cmd_compare, "regress": cmd_regress, "utility": cmd_utility,
            "train-generator": cmd_train_generator}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except GiabenchError as exc:
        print(f"giabench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("giabench: interrupted", file=sys.stderr)
        return EXIT_SIGNAL[signal.SIGINT]


if __name__ == "__main__":
    sys.exit(main())
