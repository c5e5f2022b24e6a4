import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from giabench import runner, suite
from giabench.errors import GiabenchError
from giabench.store import Store

SUITE = """
name: resume
defaults:
  dataset: mnist-sample
  model: {name: lenet}
  attack: {name: ig, iterations: 60}
grid:
  seed: [0, 1, 2, 3, 4, 5]
"""


def _count(db):
    if not os.path.exists(db):
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    except sqlite3.OperationalError:  # the table does not exist yet
        return 0


def _run(path, out):
    return subprocess.Popen([sys.executable, "-m", "giabench", "run", path, "--out", out, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_mid_suite_then_resume_gives_exactly_the_uninterrupted_cells(tmp_path):
    path = tmp_path / "resume.yaml"
    path.write_text(textwrap.dedent(SUITE))
    killed, clean = str(tmp_path / "killed"), str(tmp_path / "clean")
    db = os.path.join(killed, "results.sqlite")

    proc = _run(str(path), killed)
    deadline = time.time() + 240
    while _count(db) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = _count(db)
    assert 2 <= interrupted < 6, "the kill must land mid-suite"

    assert _run(str(path), killed).wait() == 0
    assert _run(str(path), clean).wait() == 0

    resumed, reference = Store(killed).cells(), Store(clean).cells()
    assert len(resumed) == 6 and resumed["cell"].is_unique
    assert sorted(resumed["cell"]) == sorted(reference["cell"])
    merged = resumed.merge(reference, on="cell", suffixes=("", "_ref"))
    assert (merged["psnr"] - merged["psnr_ref"]).abs().max() < 1e-6  # same seed, same numbers
    images = Store(killed).images()
    assert len(images) == 6 and not images.duplicated(["cell", "image"]).any()


def test_rerun_skips_finished_cells(tmp_path):
    loaded = suite.expand({"defaults": {"dataset": "mnist-sample", "model": {"name": "mlp", "width": 8},
                                        "attack": {"name": "ig", "iterations": 2}}, "grid": {"seed": [0, 1]}})
    store = runner.run_suite(loaded, tmp_path, runner.Environment(), show_progress=False)
    first = store.cells()
    runner.run_suite(loaded, tmp_path, runner.Environment(), show_progress=False)
    again = store.cells()
    assert len(again) == 2 and list(again["finished_at"]) == list(first["finished_at"])
    assert (tmp_path / "images" / f"{first['cell'][0]}.png").is_file()


def test_store_refuses_a_foreign_database(tmp_path):
    with sqlite3.connect(tmp_path / "results.sqlite") as con:
        con.execute("CREATE TABLE cells (x TEXT)")
    with pytest.raises(GiabenchError, match="not a giabench results database"):
        Store(tmp_path)
    with pytest.raises(GiabenchError, match="no results.sqlite"):
        Store(tmp_path / "elsewhere", create=False)


NUMERICS = {"defaults": {"dataset": "mnist-sample", "model": {"name": "lenet"}, "attack": {"name": "idlg",
                                                                                         "iterations": 30}},
            "grid": {"seed": [0, 1]}}


def test_each_row_records_its_numerics_and_a_resume_under_others_is_refused(tmp_path):
    import torch

    torch.set_num_threads(2)
    loaded = suite.expand(NUMERICS)
    store = runner.run_suite(loaded, tmp_path, runner.Environment(threads=1), show_progress=False)
    assert torch.get_num_threads() == 2  # the cell's pinned setting is undone afterwards
    frame = store.cells()
    assert (frame["threads"] == 1).all() and (frame["dtype"] == "float32").all() and (frame["device"] == "cpu").all()
    assert frame["hardware"].str.contains(r"\[", regex=True).all()  # CPU model and kernel path
    with pytest.raises(GiabenchError, match="threads=1.*threads=2"):
        runner.run_suite(loaded, tmp_path, runner.Environment(threads=2), show_progress=False)
    runner.run_suite(loaded, tmp_path, runner.Environment(threads=1), show_progress=False)  # same settings resume


def test_float64_cells_compute_and_send_in_float64_and_record_it(tmp_path):
    import torch

    from giabench import numerics
    from giabench.errors import ConfigError

    loaded = suite.expand(NUMERICS)
    single = runner.run_suite(loaded, tmp_path / "32", runner.Environment(), show_progress=False).cells()
    double = runner.run_suite(loaded, tmp_path / "64", runner.Environment(dtype="float64"),
                              show_progress=False).cells()
    assert torch.get_default_dtype() == torch.float32  # restored after the cells
    assert (double["dtype"] == "float64").all() and (double["status"] == "ok").all()
    assert (double["bytes"] == 2 * single["bytes"]).all()  # 8-byte values on the wire
    assert not (double["psnr"] == single["psnr"]).all()  # another computation, not a relabelled one
    with pytest.raises(GiabenchError, match="dtype=float64.*dtype=float32"):
        runner.run_suite(loaded, tmp_path / "64", runner.Environment(), show_progress=False)
    with pytest.raises(ConfigError, match="--dtype must be one of float32, float64, got 'float16'"):
        numerics.settings("cpu", 1, "float16")


def test_worker_processes_reproduce_the_in_process_numbers_exactly(tmp_path):
    loaded = suite.expand(NUMERICS)
    inline = runner.run_suite(loaded, tmp_path / "inline", runner.Environment(), show_progress=False).cells()
    pooled = runner.run_suite(loaded, tmp_path / "pool", runner.Environment(), workers=2, show_progress=False).cells()
    merged = inline.merge(pooled, on="cell", suffixes=("", "_pool"))
    assert len(merged) == 2
    for metric in ("psnr", "ssim", "lpips", "mse"):
        assert (merged[metric] == merged[f"{metric}_pool"]).all()
