"""The commands behind ``giabench``, as functions: the CLI only parses their arguments. Each checks its input before
any work and raises ``GiabenchError`` with one line naming the problem (exit 2); ``run`` returns 1 when cells failed
and 130/143 when interrupted, keeping every finished cell and writing their leaderboard."""

from __future__ import annotations

import json
import math
import signal
import sys
import tempfile
from pathlib import Path

from giabench import data, executors, numerics, runner, suite, tuned, utility, utility_config
from giabench.app import dp_audit
from giabench.attacks.generators import training
from giabench.errors import GiabenchError
from giabench.leaderboard import compare as comparison
from giabench.leaderboard import dp_audit as audit_tables
from giabench.leaderboard import frontiers, plots, report, rounds, summary, tables, tradeoff
from giabench.leaderboard import regress as gate
from giabench.leaderboard import tuning as tuning_table
from giabench.store import DB_NAME, Store

EXIT_FAILED_CELLS = 1
EXIT_PRIVACY_AUDIT = 3  # a DP defense adds less noise than its accountant counts (or otherwise fails its audit)
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def environment(device: str, threads: int, workers: int, executor: str = "local", address: str | None = None,
                data_root: str = "", download: bool = False, dtype: str = "float32") -> runner.Environment:
    """Where cells run, every setting checked (a Ray address is tried within ``executors.ADDRESS_TIMEOUT_S``)."""
    numerics.settings(device, threads, dtype)
    env = runner.Environment(runner.pick_device(device), data_root, download, threads, dtype)
    if workers < 1:
        raise GiabenchError(f"--workers must be at least 1, got {workers}")
    if address is not None and executor != "ray":
        raise GiabenchError("--address names a Ray cluster: it needs --executor ray")
    if data_root and not Path(data_root).is_dir():
        raise GiabenchError(f"--data-root {data_root}: no such folder")
    if executor == "ray":
        executors.check_address(address)
    return env


def out_dir(out: str | None, default: Path) -> Path:
    if out is None:
        return default
    if not out.strip():
        raise GiabenchError("--out must name a folder, got an empty string")
    if Path(out).is_file():
        raise GiabenchError(f"--out {out}: is a file, not a run folder")
    return Path(out)


def run(suite_spec: str = "default", out: str | None = None, device: str = "cpu", threads: int = 1, workers: int = 1,
        executor: str = "local", address: str | None = None, data_root: str = "", download: bool = False,
        retry_failed: bool = False, quiet: bool = False, dtype: str = "float32") -> int:
    """``giabench run``: a packaged suite or a YAML file, into a resumable run folder."""
    loaded = suite.load(suite_spec)
    env = environment(device, threads, workers, executor, address, data_root, download, dtype)
    return execute(loaded, out_dir(out, Path("runs") / loaded.slug), env, workers=workers, executor=executor,
                   address=address, retry_failed=retry_failed, quiet=quiet)


def execute(loaded: suite.Suite, out: Path, env: runner.Environment, workers: int = 1, executor: str = "local",
            address: str | None = None, retry_failed: bool = False, quiet: bool = False) -> int:
    """Run ``loaded``'s cells (then its utility section) into ``out`` and print the leaderboard of its cells."""
    stopped, audited = None, None
    if loaded.tuned is not None:  # the report sets the tuned parameters beside the defaults
        keep_record(loaded.tuned, out)
    with _StopOnSignals() as caught:
        try:
            runner.run_suite(loaded, out, env, workers=workers, show_progress=not quiet, retry_failed=retry_failed,
                             executor=executor, address=address)
            if loaded.utility is not None:
                utility.run_once(loaded.utility, out / "utility", env.threads, not quiet)
            audited = dp_audit.audit_into(loaded.cells, out, env, quiet=quiet)
        except KeyboardInterrupt:
            stopped = caught.get("signal", signal.SIGINT)
    cells = Store(out).cells() if (out / DB_NAME).is_file() else None
    cells = cells[cells["cell"].isin([c.id for c in loaded.cells])] if cells is not None else []
    if len(cells):
        print(write_leaderboard(out, f"giabench: {loaded.name}"))
    if stopped is not None:
        print(f"giabench: interrupted: {len(cells)} of {len(loaded.cells)} cells finished and stored in {out}; "
              "rerun the same command to resume", file=sys.stderr)
        return EXIT_SIGNAL[stopped]
    failed = cells[cells["status"] == "failed"] if len(cells) else []
    if len(failed):
        print(f"giabench: {len(failed)} of {len(cells)} cells failed (status 'failed', the reason in 'note', e.g. "
              f"{failed['note'].iloc[0]!r}); rerun with --retry-failed", file=sys.stderr)
        return EXIT_FAILED_CELLS
    if audited is not None and not audited["passed"].astype(bool).all():
        print(f"giabench: a DP defense failed its privacy audit; see {out / audit_tables.SUMMARY_FILE}",
              file=sys.stderr)
        return EXIT_PRIVACY_AUDIT
    return 0


def keep_record(record: dict, out: Path) -> None:
    """Write the tuning record a suite ran with into its run folder (unchanged: left alone)."""
    text = json.dumps(record, indent=1, default=str)
    target = out / tuned.RECORD
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise GiabenchError(f"{target}: cannot write the tuning record ({exc.strerror})") from None


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


def run_folder(path: str) -> Path:
    """A folder that holds a giabench results database."""
    folder = Path(path)
    if not folder.exists():
        raise GiabenchError(f"{folder}: no such run folder")
    if not folder.is_dir():
        raise GiabenchError(f"{folder}: is a file, not a run folder")
    Store(folder, create=False)  # refuses a folder without, or with a foreign or corrupt, results database
    return folder


def write_leaderboard(run_dir: Path, title: str, utility_csv: str | None = None) -> str:
    """Write the leaderboard files of ``run_dir`` and return the ranking as text, followed by what was written; a
    file that cannot be written (a read-only folder) is a warning, the ranking is still returned."""
    if utility_csv is None and (run_dir / "utility" / "utility.csv").is_file():  # the suite's own utility section
        utility_csv = str(run_dir / "utility" / "utility.csv")
    rows = tradeoff.read_utility(utility_csv) if utility_csv else None  # checked before anything is written
    record = tuned.load(run_dir) if (run_dir / tuned.RECORD).is_file() else None
    frame = tables.cells(run_dir)
    if frame.empty:
        raise GiabenchError(f"{run_dir}: no finished cells yet")
    store = Store(run_dir, create=False)
    stored, images = store.cells(), store.images()
    against = tuning_table.table(stored, images, record) if record is not None else None
    front = frontiers.table(frame, images, rows)
    trade = tradeoff.table(frame, rows) if rows is not None else None
    defended = summary.defense_summary(frame, images, rows)
    try:
        tables.write_csv(frame, run_dir / "leaderboard.csv")
        per_round = rounds.table(stored)
        if len(per_round):
            tables.write_csv(per_round, run_dir / "rounds.csv")
        if against is not None:
            tables.write_csv(against, run_dir / tuning_table.FILE)
        if len(front):
            tables.write_csv(front, run_dir / frontiers.FILE)
        if trade is not None:
            tables.write_csv(trade, run_dir / "privacy_utility.csv")
            figure = plots.privacy_utility(report.utility_points(trade))
            if figure:
                (run_dir / "privacy_utility.svg").write_text(figure, encoding="utf-8")
        report.write(frame, run_dir, run_dir / "leaderboard.html", title=title, tradeoff=trade, utility=rows,
                     defended=defended, tuned=against, frontier=front)
        written = f"\n\nwrote {run_dir / 'leaderboard.csv'} and {run_dir / 'leaderboard.html'}"
    except OSError as exc:
        print(f"giabench: warning: cannot write the leaderboard in {run_dir} ({exc.strerror})", file=sys.stderr)
        written = ""
    answer = f"\n\ndefenses, most leakage first (worst case over every attack):\n{summary.terminal(defended)}" \
        if len(defended) else ""
    if against is not None and len(against):
        answer += f"\n\ntuned against default attacks, on the private batches:\n{tuning_table.terminal(against)}"
    return tables.terminal(tables.ranking(frame, images)) + answer + written


def leaderboard(run_dir: str, utility_csv: str | None = None) -> int:
    """``giabench leaderboard``: rewrite a run folder's leaderboard files."""
    folder = run_folder(run_dir)
    print(write_leaderboard(folder, f"giabench: {folder.name}", utility_csv))
    return 0


def writable_file(path: str, flag: str) -> Path:
    """A file path whose folder exists and that is not a folder itself."""
    target = Path(path)
    if not path.strip() or target.is_dir():
        raise GiabenchError(f"{flag} {path!r}: expected a file path, not a folder")
    if not target.parent.is_dir():
        raise GiabenchError(f"{flag} {path}: folder {target.parent} does not exist")
    return target


def compare(run_a: str, run_b: str, csv: str | None = None) -> int:
    """``giabench compare``: per setting, what changed between two run folders."""
    before, after = run_folder(run_a), run_folder(run_b)
    target = writable_file(csv, "--csv") if csv is not None else None
    table = comparison.compare(tables.cells(before), tables.cells(after))
    print(comparison.terminal(table))
    changed = int((table["changed"] != "").sum())
    print(f"\ncompare: {len(table)} settings, {changed} changed beyond the gate's tolerance")
    if target is not None:
        tables.write_csv(table, target)
        print(f"wrote {target}")
    return 0


def show(cell: str, runs: str = "runs") -> int:
    """``giabench show``: one cell's config and scores, found by a unique prefix of its id."""
    if not cell or not all(c in "0123456789abcdef" for c in cell):
        raise GiabenchError(f"cell {cell!r}: a cell id is hexadecimal (0-9, a-f), as giabench run prints it")
    if not Path(runs).is_dir():
        raise GiabenchError(f"--runs {runs}: no such folder of run folders")
    matches = []
    for db in sorted(Path(runs).glob(f"*/{DB_NAME}")):
        try:
            frame = Store(db.parent, create=False).cells()
        except GiabenchError as exc:  # one broken run folder must not hide the others
            print(f"giabench: warning: skipping {exc}", file=sys.stderr)
            continue
        for _, row in frame[frame["cell"].str.startswith(cell)].iterrows():
            matches.append((db.parent, row))
    if not matches:
        raise GiabenchError(f"no cell {cell!r} in {runs}/*/{DB_NAME}")
    if len({row['cell'] for _, row in matches}) > 1:
        raise GiabenchError(f"cell prefix {cell!r} is ambiguous; give more characters")
    run_dir, row = matches[0]
    print(f"cell {row['cell']} in {run_dir}")
    print(json.dumps(json.loads(row["config"]), indent=2))
    for key in ("psnr", "ssim", "lpips", "mse", "label_acc", "exact", "epsilon", "delta", "adjacency", "bytes",
                "iterations", "wall_s", "device", "threads", "dtype", "hardware", "versions", "image", "status", "note",
                "extra"):
        print(f"{key:10s} {row[key]}")
    return 0


def regress(suite_spec: str = "smoke", baseline: str = "", out: str | None = None, device: str = "cpu",
            threads: int = 1, workers: int = 1, executor: str = "local", address: str | None = None,
            update: bool = False, quiet: bool = False, dtype: str = "float32") -> int:
    """``giabench regress``: run a suite and judge it, setting by setting, against a baseline (``--update``: write
    the run's summary as the baseline). Exit 1 on any regression."""
    loaded = suite.load(suite_spec)
    target = writable_file(baseline, "--baseline") if update else None
    reference = None if update else gate.read_baseline(baseline)
    env = environment(device, threads, workers, executor, address, dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="giabench-regress-") as scratch:
        folder = out_dir(out, Path(scratch))
        runner.run_suite(loaded, folder, env, workers=workers, show_progress=not quiet, executor=executor,
                         address=address)
        frame = tables.cells(folder)
    result = gate.summarize(frame[frame["cell"].isin([c.id for c in loaded.cells])])
    if update:
        gate.check_baseline(result)
        gate.write_baseline(result, target)
        print(f"wrote baseline {target} ({len(result)} settings, {int(result['cells'].sum())} cells)")
        return 0
    failures, notes = gate.compare(result, reference)
    for line in notes:
        print(f"NOTE {line}")
    for line in failures:
        print(f"REGRESSION {line}")
    print(f"regress: {len(reference)} baseline settings ({int(reference['cells'].sum())} cells), "
          f"{len(failures)} regressions")
    return 1 if failures else 0


def train_generator(dataset: str, out: str, epochs: int = 20, batch: int = 64, lr: float = 2e-4,
                    latent_dim: int = 64, width: int = 64, seed: int = 0, threads: int = 2, grid_every: int = 5,
                    quiet: bool = False) -> int:
    """``giabench train-generator``: a DCGAN image prior for the generative attacks."""
    target = Path(out)
    if target.suffix != ".pt" or target.is_dir():
        raise GiabenchError(f"--out {out}: the checkpoint path must end in .pt (and not name a folder)")
    for name, value in (("epochs", epochs), ("batch", batch), ("latent-dim", latent_dim), ("width", width),
                        ("threads", threads), ("grid-every", grid_every)):
        if value < 1:
            raise GiabenchError(f"--{name} must be >= 1, got {value}")
    if not math.isfinite(lr) or lr <= 0:
        raise GiabenchError(f"--lr must be a finite number > 0, got {lr}")
    if seed < 0:
        raise GiabenchError(f"--seed must be >= 0, got {seed}")
    images = len(data.load(dataset))
    if batch > images:
        raise GiabenchError(f"--batch {batch}: dataset {dataset} has only {images} images")
    meta = training.train(dataset, target, epochs=epochs, batch=batch, lr=lr, latent_dim=latent_dim, width=width,
                          seed=seed, threads=threads, grid_every=grid_every, show_progress=not quiet)
    print(f"wrote {target} (sha256 {meta['sha256']}) and {target.with_suffix('.json')}; "
          f"final losses {meta['final_losses']}")
    return 0


def utility_run(config: str, out: str = "runs/utility", data_root: str = "", threads: int = 1,
                quiet: bool = False) -> int:
    """``giabench utility``: short federated training under each defense of a utility file."""
    cfg = utility_config.load_config(config)
    cfg.data_root = data_root or cfg.data_root
    folder = out_dir(out, Path("runs/utility"))
    frame = utility.run(cfg, folder, show_progress=not quiet, threads=threads)
    columns = ["defense", "defense_params", "accuracy", "bytes_per_round", "wall_per_round_s", "epsilon", "adjacency"]
    print(frame[columns].to_string(index=False))
    print(f"wrote {folder / 'utility.csv'}")
    return 0


def dp_audit_run(suite_spec: str, out: str | None = None, draws: int = dp_audit.DRAWS,
                 lower_draws: int = dp_audit.LOWER_DRAWS, device: str = "cpu", threads: int = 1, data_root: str = "",
                 quiet: bool = False) -> int:
    """``giabench dp-audit``: audit a suite's DP settings; the table printed, exit status 3 when any fails."""
    if draws < 10 or lower_draws < 0:
        raise GiabenchError(f"--draws must be >= 10 and --lower-draws >= 0, got {draws} and {lower_draws}")
    loaded = suite.load(suite_spec)
    folder = out_dir(out, Path("runs") / f"{loaded.slug}-dp-audit")
    env = environment(device, threads, 1, "local", None, data_root, False)
    audited = dp_audit.audit_into(loaded.cells, folder, env, draws, lower_draws, quiet)
    if audited is None:
        print(f"giabench: suite {loaded.name} has no DP defense setting (none states an adjacency)")
        return 0
    print(audit_tables.terminal(audited))
    print(f"\nwrote {folder / audit_tables.SUMMARY_FILE} and {folder / audit_tables.CHECKS_FILE}")
    return 0 if audited["passed"].astype(bool).all() else EXIT_PRIVACY_AUDIT
