"""``giabench tune``: tune every attack of a suite per setting (``giabench.tuning``), then run the suite with the
default and the tuned parameters side by side on its private batches, into the same folder:

    OUT/study/optuna.journal   the studies (a killed tuning resumes from it)
    OUT/trials/                the trial cells (a run folder of their own)
    OUT/tuned.json             the record: per setting the search space, tuning data, default and tuned parameters
    OUT/results.sqlite ...     the evaluation run, its leaderboard and report with the tuned-against-default table
"""

from __future__ import annotations

import sys
from pathlib import Path

from giabench import suite, tuning
from giabench.app import commands
from giabench.errors import GiabenchError
from giabench.registry import attacks as attack_registry


def run(suite_spec: str, out: str | None = None, trials: int = tuning.TRIALS, batches: int = tuning.BATCHES,
        seed: int = 0, attacks: str = "", stand_in: str | None = None, device: str = "cpu", threads: int = 1,
        workers: int = 1, executor: str = "local", address: str | None = None, data_root: str = "",
        quiet: bool = False, objective: str = "psnr", dtype: str = "float32") -> int:
    loaded = suite.load(suite_spec)
    env = commands.environment(device, threads, workers, executor, address, data_root, dtype=dtype)
    folder = commands.out_dir(out, Path("runs") / f"{loaded.slug}-tune")
    chosen = {name.strip() for name in attacks.split(",") if name.strip()} or None
    unknown = sorted((chosen or set()) - set(attack_registry.names()))
    if unknown:
        raise GiabenchError(f"--attacks: unknown attack {unknown[0]!r}; known: {', '.join(attack_registry.names())}")
    if seed < 0:
        raise GiabenchError(f"--seed must be >= 0, got {seed}")
    try:
        record = tuning.tune(loaded, folder, env, trials, batches, seed, chosen, stand_in, workers, executor,
                             address, quiet, objective)
    except KeyboardInterrupt:
        print(f"giabench: interrupted: the finished trials are kept in {folder}; rerun the same command to resume",
              file=sys.stderr)
        raise
    tuned = [s for s in record["settings"] if "tuned" in s]
    print(f"tuned {len(tuned)} settings ({sum(s['trials'] for s in tuned)} trials, "
          f"{sum(s['attack_minutes'] for s in tuned):.1f} minutes of attack time; {record['wall_minutes']:.1f} "
          f"minutes in all); wrote {folder / 'tuned.json'}")
    return commands.execute(suite.with_tuned(loaded, record), folder, env, workers=workers, executor=executor,
                            address=address, quiet=quiet)
