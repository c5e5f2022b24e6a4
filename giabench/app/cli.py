"""The ``giabench`` command line: it parses, and the functions of ``giabench.app.commands`` (and ``audit``,
``describe``) do the work. Options that several commands share are declared once, in parent parsers. Bad input exits
with code 2 and one line naming the problem; a run with failed cells exits 1; Ctrl-C (or SIGTERM) stops cleanly with
130 (143), keeping every finished cell and writing their leaderboard."""

from __future__ import annotations

import argparse
import signal
import sys

from giabench import __version__, tuning
from giabench.app import audit, commands, describe, dp_audit, reproduce, tune
from giabench.errors import GiabenchError
from giabench.registry import KINDS, protocols

EXIT_BAD_INPUT = 2


def _parents() -> dict[str, argparse.ArgumentParser]:
    """The option groups shared by several commands."""
    numerics = argparse.ArgumentParser(add_help=False)
    numerics.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                          help="where cells run (default: %(default)s)")
    numerics.add_argument("--threads", type=int, default=1,
                          help="CPU threads per cell, in-process and in every worker (default: %(default)s); a "
                               "numerics setting, stored with every result: a run folder holds one setting only")
    numerics.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                          help="the floating type attack cells compute in (default: %(default)s; utility training "
                               "stays float32); a numerics setting, stored with every result")
    parallel = argparse.ArgumentParser(add_help=False)
    parallel.add_argument("--workers", type=int, default=1, help="cells run in parallel processes (default: "
                                                                 "%(default)s)")
    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--executor", default="local", choices=["local", "ray"],
                         help="local: in-process or --workers processes (default); ray: one Ray task per cell")
    cluster.add_argument("--address", help="with --executor ray: the cluster to join (auto, HOST:PORT or "
                                           "ray://HOST:PORT); default: a local Ray instance on loopback")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", help="no progress bars")
    data_root = argparse.ArgumentParser(add_help=False)
    data_root.add_argument("--data-root", default="", help="folder of real datasets (cifar10, mnist, ...)")
    return {"numerics": numerics, "parallel": parallel, "cluster": cluster, "quiet": quiet, "data_root": data_root}


def _parser() -> argparse.ArgumentParser:
    shared = _parents()
    fedavg = protocols.defaults("fedavg")
    parser = argparse.ArgumentParser(prog="giabench", description="Gradient inversion attacks and defenses in FL.")
    parser.add_argument("--version", action="version", version=f"giabench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, *groups: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, parents=[shared[g] for g in groups])

    run = command("run", "run a suite (default: the packaged 'default' suite) and write the leaderboard",
                  "numerics", "parallel", "cluster", "data_root", "quiet")
    run.add_argument("suite_spec", metavar="suite", nargs="?", default="default",
                     help="a packaged suite name or a YAML file")
    run.add_argument("--out", help="run folder (default: runs/SUITE); rerunning resumes it")
    run.add_argument("--download", action="store_true", help="allow torchvision to download missing datasets")
    run.add_argument("--retry-failed", action="store_true", help="run the cells stored as failed again")

    lister = command("list", "list registered components")
    lister.add_argument("kind", choices=[*KINDS, "suites"], help="which registry to list")
    lister.add_argument("--verbose", action="store_true", help="each component with its parameters: default, "
                                                                "range and what it does")

    described = command("describe", "one component (attack, defense, model, ...): its docstring and its parameters "
                                     "with their defaults, ranges and what each does")
    described.add_argument("name", help="a registered name, e.g. ig or dp-sgd")

    board = command("leaderboard", "write leaderboard.csv and leaderboard.html for a run folder")
    board.add_argument("run_dir", help="a run folder written by giabench run")
    board.add_argument("--utility", dest="utility_csv", help="a utility.csv from giabench utility: adds the "
                       "privacy-utility table and plot (default: the run's own utility/utility.csv when its suite "
                       "has one)")

    compare = command("compare", "per setting, what changed between two run folders (means over seeds, flagged "
                                 "where the change exceeds the gate's tolerance)")
    compare.add_argument("run_a", help="the run folder before the change")
    compare.add_argument("run_b", help="the run folder after the change")
    compare.add_argument("--csv", help="also write the full comparison to this CSV file")

    show = command("show", "print one cell's config and scores")
    show.add_argument("cell", help="a cell id (or a unique prefix of one)")
    show.add_argument("--runs", default="runs", help="folder of run folders to search (default: %(default)s)")

    audit = command("audit", "how much YOUR model leaks: the attacks that apply to it, under your protocol, batch "
                             "sizes and defenses; verdicts per threat model", "numerics", "parallel", "quiet")
    audit.add_argument("--model", required=True, help="MODULE:FUNCTION (a module on the Python path or the current "
                       "folder, or path/to/file.py:FUNCTION) returning your torch.nn.Module; no pickle")
    audit.add_argument("--weights", default="", help="a state dict of tensors for it (loaded with weights_only=True)")
    audit.add_argument("--data", dest="data_name", default="cifar10-sample",
                       help="dataset name or folder:PATH (default: %(default)s)")
    audit.add_argument("--protocol", default="fedsgd", choices=sorted(protocols.names()),
                       help="default: %(default)s")
    audit.add_argument("--epochs", type=int, help=f"FedAvg local epochs (default: {fedavg['epochs']})")
    audit.add_argument("--local-batch", type=int, help=f"FedAvg local batch size, 0 for the whole batch (default: "
                                                       f"{fedavg['batch_size']})")
    audit.add_argument("--lr", type=float, help=f"FedAvg local learning rate (default: {fedavg['lr']})")
    audit.add_argument("--shuffle", action="store_true", default=None,
                       help="FedAvg: the client visits its batch in a fresh random order every local epoch")
    audit.add_argument("--batch-sizes", default="1,8", help="client batch sizes, comma-separated (default: "
                                                            "%(default)s)")
    audit.add_argument("--defenses", dest="defense_list", default="none,dp-sgd:noise_multiplier=1",
                       help="defense settings, comma-separated, NAME:KEY=VALUE;KEY=VALUE (default: none and DP-SGD "
                            "at noise multiplier 1)")
    audit.add_argument("--budget", default="standard", choices=["quick", "standard", "thorough"],
                       help="attack budgets, seeds and utility rounds (default: %(default)s)")
    audit.add_argument("--out", required=True, help="the audit's run folder (resumable)")

    regress = command("regress", "run a suite and judge it, setting by setting, against a baseline CSV (attacks "
                                 "weaker, defenses leakier, costs changed)", "numerics", "parallel", "cluster", "quiet")
    regress.add_argument("--suite", dest="suite_spec", default="smoke",
                         help="a packaged suite name or a YAML file (default: %(default)s)")
    regress.add_argument("--baseline", required=True, help="the baseline CSV (per-setting summary) to judge against")
    regress.add_argument("--out", help="run folder (default: a fresh temporary folder, so that nothing is reused)")
    regress.add_argument("--update", action="store_true", help="write the run's per-setting summary as the baseline")

    util = command("utility", "short federated training under each defense of a utility YAML file: accuracy, "
                              "uplink bytes and time per round, written to OUT/utility.csv", "data_root", "quiet")
    util.add_argument("config", help="a utility YAML file (see benchmarks/utility.yaml)")
    util.add_argument("--out", default="runs/utility", help="output folder (default: %(default)s)")
    util.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s); recorded")

    repro = command("reproduce", "run papers' settings and set each published figure beside ours, with a verdict "
                                 "per row (giabench/reproductions/ID.yaml)", "numerics", "parallel", "data_root",
                    "quiet")
    repro.add_argument("ids", nargs="*", metavar="ID", help="reproduction ids, or all (default: all)")
    repro.add_argument("--list", dest="list_only", action="store_true",
                       help="every reproduction with its published figures and needs; runs nothing")
    repro.add_argument("--out", help="folder of the reproductions' run folders and table (default: runs/reproduce)")
    repro.add_argument("--budget", default="paper", choices=["paper", "cpu"],
                       help="paper: the paper's setting (default); cpu: the stated scaled-down version where the "
                            "paper's setting needs a GPU or data this machine lacks (never reported as reproduced)")
    repro.add_argument("--download", action="store_true", help="allow torchvision to download missing datasets")

    dp = command("dp-audit", "audit every DP defense setting of a suite: the noise each release adds against its "
                             "accountant (count, sensitivity, variance) and an empirical epsilon lower bound",
                 "data_root", "quiet")
    dp.add_argument("suite_spec", metavar="suite", help="a packaged suite name or a YAML file")
    dp.add_argument("--out", help="folder of privacy_audit.csv and privacy_calibration.csv (default: "
                                  "runs/SUITE-dp-audit)")
    dp.add_argument("--draws", type=int, default=dp_audit.DRAWS,
                    help="messages per setting for the calibration (default: %(default)s)")
    dp.add_argument("--lower-draws", type=int, default=dp_audit.LOWER_DRAWS,
                    help="messages per neighbour for the lower bound, 0 to skip it (default: %(default)s)")
    dp.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="default: %(default)s")
    dp.add_argument("--threads", type=int, default=1, help="CPU threads (default: %(default)s); recorded")

    tuner = command("tune", "tune each attack of a suite per setting (Optuna TPE on surrogate or public stand-in "
                            "images, never the private batches), then run the suite with default and tuned "
                            "parameters side by side", "numerics", "parallel", "cluster", "data_root", "quiet")
    tuner.add_argument("suite_spec", metavar="suite", help="a packaged suite name or a YAML file")
    tuner.add_argument("--out", help="the tuning folder (default: runs/SUITE-tune); rerunning resumes it")
    tuner.add_argument("--trials", type=int, default=tuning.TRIALS,
                       help="trials per setting, besides the default parameters (default: %(default)s)")
    tuner.add_argument("--batches", type=int, default=tuning.BATCHES,
                       help="tuning batches each trial is scored on (default: %(default)s)")
    tuner.add_argument("--seed", type=int, default=0, help="seed of the samplers (default: %(default)s)")
    tuner.add_argument("--attacks", default="", help="only these attacks, comma-separated (default: every attack "
                                                     "with a search space)")
    tuner.add_argument("--objective", default="psnr", choices=list(tuning.OBJECTIVES),
                       help="what a trial maximizes: mean PSNR (clipped at 40 dB), SSIM, or minus LPIPS (default: "
                            "%(default)s)")
    tuner.add_argument("--stand-in", help="the public dataset a threat model without surrogate data tunes on "
                                          "(default: giabench.tuning.STAND_INS, e.g. cifar100-sample for CIFAR-10)")

    gan = command("train-generator", "train a DCGAN image prior for the generative attacks; writes OUT (.pt), OUT's "
                                     ".json (config, sha256) and sample grids", "quiet")
    gan.add_argument("--dataset", required=True, help="a dataset name, e.g. mnist-5k or natural-patches")
    gan.add_argument("--out", required=True, help="checkpoint path ending in .pt")
    gan.add_argument("--epochs", type=int, default=20, help="passes over the dataset (default: %(default)s)")
    gan.add_argument("--batch", type=int, default=64, help="images per step (default: %(default)s)")
    gan.add_argument("--lr", type=float, default=2e-4, help="Adam step size of both networks (default: %(default)s)")
    gan.add_argument("--latent-dim", type=int, default=64, help="size of the latent vector z (default: %(default)s)")
    gan.add_argument("--width", type=int, default=64, help="channels of the widest layer (default: %(default)s)")
    gan.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: %(default)s)")
    gan.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s; recorded: results "
                                                            "depend on it)")
    gan.add_argument("--grid-every", type=int, default=5, help="write a sample grid every N epochs (default: "
                                                               "%(default)s)")
    return parser


COMMANDS = {"run": commands.run, "audit": audit.run, "list": describe.list_components, "describe": describe.describe,
            "leaderboard": commands.leaderboard, "show": commands.show, "compare": commands.compare,
            "regress": commands.regress, "utility": commands.utility_run, "train-generator": commands.train_generator,
            "reproduce": reproduce.run, "dp-audit": commands.dp_audit_run, "tune": tune.run}


def main(argv: list[str] | None = None) -> int:
    try:
        args = vars(_parser().parse_args(argv))
        return COMMANDS[args.pop("command")](**args)
    except GiabenchError as exc:
        print(f"giabench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("giabench: interrupted", file=sys.stderr)
        return commands.EXIT_SIGNAL[signal.SIGINT]


if __name__ == "__main__":
    sys.exit(main())
