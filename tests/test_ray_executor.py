"""Cells as Ray tasks on a local Ray instance (loopback, no dashboard): the same cell ids and the same numbers as the
in-process run, and a killed driver resumes like any other."""

import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from giabench import executors, runner, suite
from giabench.store import Store

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.xdist_group("ray")  # one Ray cluster at a time under pytest-xdist

SUITE = """
name: ray
defaults: {dataset: mnist-sample, model: {name: mlp, width: 8}, attack: {name: ig, iterations: 10, tv: 0.0}}
grid:
  defense: [none, {name: dp-sgd}]
  seed: [0, 1, 2]
"""


@pytest.fixture(scope="module")
def local_ray():
    yield
    ray.shutdown()


def test_cells_on_ray_give_the_in_process_numbers(tmp_path, local_ray):
    loaded = suite.expand(__import__("yaml").safe_load(SUITE))
    inline = runner.run_suite(loaded, tmp_path / "inline", runner.Environment(), show_progress=False).cells()
    remote = runner.run_suite(loaded, tmp_path / "ray", runner.Environment(), show_progress=False,
                              executor="ray").cells()
    assert sorted(remote["cell"]) == sorted(inline["cell"]) and len(remote) == 6
    merged = inline.merge(remote, on="cell", suffixes=("", "_ray"))
    for metric in ("psnr", "ssim", "lpips", "epsilon"):
        assert (merged[metric] == merged[f"{metric}_ray"]).all(), metric


def test_ray_tasks_report_each_cells_iterations_to_the_driver(local_ray):
    from test_progress import RecordingBoard, steps_by_cell

    cells = suite.expand(__import__("yaml").safe_load(SUITE)).cells[:2]
    board = RecordingBoard()
    executors.on_ray(cells, runner.run_cell_safely, runner.Environment(), None, lambda cell, result: None, board)
    begun, steps, ended = steps_by_cell(board.events)
    ids = {c.id for c in cells}
    assert begun == dict.fromkeys(ids, 10) and sum(steps.values()) == 20 and ended == ids


def _stored(out) -> int:
    try:
        with sqlite3.connect(out / "results.sqlite", timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_a_killed_ray_driver_resumes_without_losing_or_repeating_cells(tmp_path):
    path = tmp_path / "ray.yaml"
    path.write_text(SUITE.replace("seed: [0, 1, 2]", "seed: [0, 1, 2, 3, 4, 5, 6, 7]")
                    .replace("iterations: 10", "iterations: 150"))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "giabench", "run", str(path), "--out", str(out), "--quiet", "--executor", "ray"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while _stored(out) < 2 and driver.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    kept = _stored(out)
    assert 2 <= kept < 16
    assert subprocess.run(command, capture_output=True, text=True, timeout=600).returncode == 0
    cells = Store(out).cells()
    assert len(cells) == 16 and cells["cell"].is_unique
