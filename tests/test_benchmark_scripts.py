"""The GPU check runs on CPU at small sizes, so the script a lent GPU would run is known to work (its figures are
benchmarks, never asserted here)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_its_speed_and_clipping_steps_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--device", "cpu", "--steps",
                           "speed,clipping", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = (tmp_path / "gpu_check.txt").read_text()
    assert "== speed" in log and "== clipping" in log
    rows = [line.split()[:2] for line in log.splitlines() if line.startswith(("convnet", "lenet", "resnet18"))]
    # speed: convnet16 at B = 1, 2; clipping: four models at B = 2
    assert rows == [["convnet16", "1"], ["convnet16", "2"], ["lenet", "2"], ["convnet16", "2"], ["convnet64", "2"],
                    ["resnet18", "2"]]
