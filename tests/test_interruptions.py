"""Interrupted, concurrent and failing runs lose nothing: real processes, real signals, real file systems where the
machine allows it (a tmpfs mount), and a simulated OSError where it does not."""

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from giabench.app import cli
from giabench.contracts import Attack, Reconstruction
from giabench.registry import attacks
from giabench.store import Store

SLOW = """
name: slow
defaults:
  dataset: mnist-sample
  model: {name: lenet}
  attack: {name: ig, iterations: 80}
grid:
  seed: [0, 1, 2, 3, 4, 5, 6, 7]
"""


def _write(tmp_path, text=SLOW, name="slow.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def _interruptible() -> None:
    """SIGINT at its default in the run: a shell that starts the tests in the background (``nohup cmd &``) ignores
    SIGINT in every process it starts, and the tests play a terminal's Ctrl-C on a foreground run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(suite, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "giabench", "run", suite, "--out", str(out), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible)


def _stored(out) -> int:
    try:
        with sqlite3.connect(Path(out) / "results.sqlite", timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _wait(condition, seconds=240):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_stops_cleanly_keeps_its_cells_and_resumes(tmp_path, sig, code):
    suite, out = _write(tmp_path), tmp_path / "run"
    proc = _start(suite, out)
    _wait(lambda: _stored(out) >= 1 or proc.poll() is not None)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "interrupted" in err
    kept = _stored(out)
    assert 1 <= kept < 8
    assert len((out / "leaderboard.csv").read_text().strip().splitlines()) == kept + 1
    assert _start(suite, out).wait(timeout=600) == 0 and _stored(out) == 8


def test_interrupting_a_pool_stops_its_workers(tmp_path):
    suite, out = _write(tmp_path), tmp_path / "run"
    proc = _start(suite, out, "--workers", "2")
    _wait(lambda: _stored(out) >= 1 or proc.poll() is not None)
    children = _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    _wait(lambda: not any(_alive(c) for c in children), 10)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc")
def test_workers_die_with_a_killed_parent(tmp_path):
    suite, out = _write(tmp_path), tmp_path / "run"
    proc = _start(suite, out, "--workers", "2")
    _wait(lambda: _stored(out) >= 1 or proc.poll() is not None)
    children = _children(proc.pid)
    assert len(children) >= 2  # the two workers (and the resource tracker)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _wait(lambda: not any(_alive(c) for c in children), 5)


def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tmp_path):
    suite, out = _write(tmp_path, SLOW.replace("iterations: 80", "iterations: 3000")), tmp_path / "run"
    first = _start(suite, out)
    _wait(lambda: (out / ".lock").is_file() and (out / ".lock").read_text().startswith("process"))
    second = _start(suite, out)
    _, err = second.communicate(timeout=120)
    assert first.poll() is None, "the first run must still hold the folder"
    assert second.returncode == 2 and f"is in use by process {first.pid}" in err and "Traceback" not in err
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 130
    rows = Store(out).cells()
    assert rows["cell"].is_unique and len(rows) == _stored(out) < 8


def test_a_run_folder_belongs_to_one_suite(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    body = "name: same\ndefaults: {dataset: mnist-sample, model: {name: mlp, width: 8}, attack: {name: ig, " \
           "iterations: 1}}\ngrid: {seed: [%d]}\n"
    (tmp_path / "a.yaml").write_text(body % 0)
    (tmp_path / "b.yaml").write_text(body % 1)
    assert cli.main(["run", "a.yaml", "--quiet"]) == 0
    assert cli.main(["run", "b.yaml", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "runs/same holds suite 'same' from" in err and "a.yaml" in err and "use another --out" in err
    (tmp_path / "a.yaml").write_text(body % 2)  # the same file, grown: the folder is still its own
    assert cli.main(["run", "a.yaml", "--quiet"]) == 0 and len(Store("runs/same").cells()) == 2


class _Raises(Attack):
    """An attack that fails inside its cell."""

    def reconstruct(self, view, simulate, generator, progress=None):
        raise RuntimeError("injected failure")


class _ReturnsNaN(Attack):
    """An attack that diverges to NaN."""

    def reconstruct(self, view, simulate, generator, progress=None):
        return Reconstruction(torch.full((view.batch_size, *view.shape), float("nan")), None, 1)


def test_a_failing_cell_is_stored_as_failed_and_the_suite_goes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(attacks._items, "fault-raises", _Raises)
    monkeypatch.setitem(attacks._items, "fault-nan", _ReturnsNaN)
    suite = _write(tmp_path, "defaults: {dataset: mnist-sample, model: {name: mlp, width: 8}}\n"
                             "grid: {attack: [fault-raises, fault-nan, {name: ig, iterations: 1}]}\n", "f.yaml")
    out = tmp_path / "run"
    assert cli.main(["run", suite, "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "2 of 3 cells failed" in err and "--retry-failed" in err
    rows = Store(out).cells().set_index("attack")
    assert rows.loc["fault-raises", "status"] == "failed" and "RuntimeError: injected failure" in \
        rows.loc["fault-raises", "note"]
    assert rows.loc["fault-nan", "status"] == "failed" and "NaN" in rows.loc["fault-nan", "note"]
    assert rows.loc["ig", "status"] == "ok" and (out / "leaderboard.html").is_file()
    assert cli.main(["run", suite, "--out", str(out), "--quiet"]) == 1  # resumed: nothing recomputed
    assert Store(out).cells().set_index("attack")["finished_at"].equals(rows["finished_at"])
    assert cli.main(["run", suite, "--out", str(out), "--quiet", "--retry-failed"]) == 1
    again = Store(out).cells().set_index("attack")["finished_at"]
    assert again["ig"] == rows.loc["ig", "finished_at"] and again["fault-nan"] != rows.loc["fault-nan", "finished_at"]


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], check=True)  # still busy: detach it now, free it when unused


FOUR = "defaults: {dataset: mnist-sample, model: {name: mlp, width: 8}, attack: {name: ig, iterations: 1}}\n" \
       "grid: {seed: [0, 1, 2, 3]}\n"


def test_a_finished_run_on_a_read_only_file_system_resumes(tmp_path, capsys):
    mount = tmp_path / "ro"
    if not _tmpfs(mount, "4m"):
        pytest.skip("mounting a tmpfs needs root and mount rights")
    try:
        suite, out = _write(tmp_path, FOUR, "four.yaml"), mount / "run"
        assert cli.main(["run", suite, "--out", str(out), "--quiet"]) == 0
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        capsys.readouterr()
        assert cli.main(["run", suite, "--out", str(out), "--quiet"]) == 0
        captured = capsys.readouterr()
        assert "cannot write the leaderboard" in captured.err and "PSNR" in captured.out
    finally:
        _unmount(mount)


def test_a_read_only_leaderboard_is_a_warning_when_simulated(tmp_path, capsys, monkeypatch):
    from giabench.leaderboard import tables

    suite, out = _write(tmp_path, FOUR, "four.yaml"), tmp_path / "run"
    assert cli.main(["run", suite, "--out", str(out), "--quiet"]) == 0

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tables, "write_csv", read_only)
    capsys.readouterr()
    assert cli.main(["run", suite, "--out", str(out), "--quiet"]) == 0
    assert "cannot write the leaderboard" in capsys.readouterr().err


def test_a_full_disk_stops_the_run_in_one_line_and_the_stored_cells_resume(tmp_path, capsys):
    mount = tmp_path / "small"
    if not _tmpfs(mount, "120k"):
        pytest.skip("mounting a tmpfs needs root and mount rights")
    try:
        body = FOUR.replace("[0, 1, 2, 3]", str(list(range(20))))
        suite, out = _write(tmp_path, body, "many.yaml"), mount / "run"
        assert cli.main(["run", suite, "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("cannot store cell" in err[0] or "cannot write the image" in err[0]) and \
            "rerun to resume" in err[0]
        stored = _stored(out)
        with sqlite3.connect(out / "results.sqlite") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        subprocess.run(["mount", "-o", "remount,size=8m", str(mount)], check=True)
        assert cli.main(["run", suite, "--out", str(out), "--quiet"]) == 0 and _stored(out) == 20 > stored
    finally:
        _unmount(mount)


def test_a_full_disk_when_simulated(tmp_path, capsys, monkeypatch):
    from PIL import Image

    suite, out = _write(tmp_path, FOUR, "four.yaml"), tmp_path / "run"
    saved, original = [], Image.Image.save

    def fills_up(self, path, *args, **kwargs):
        if saved:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(path)
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", fills_up)
    assert cli.main(["run", suite, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the image" in err[0] and "No space left on device" in err[0]
    assert _stored(out) == 1
    monkeypatch.setattr(Image.Image, "save", original)
    assert cli.main(["run", suite, "--out", str(out), "--quiet"]) == 0 and _stored(out) == 4
