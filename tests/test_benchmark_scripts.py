"""The GPU check runs on CPU at small sizes, so the script a lent GPU would run is known to work (its figures are
benchmarks, never asserted here)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_its_benchmark_steps_on_cpu(tmp_path):
    steps = "speed,clipping,restarts,double"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--device", "cpu", "--steps",
                           steps, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = (tmp_path / "gpu_check.txt").read_text()
    sections = dict(part.split("\n", 1) for part in log.split("== ")[1:])
    assert [header.split()[0] for header in sections] == steps.split(",")
    rows = {step: [line.split() for line in text.splitlines() if line.split() and line.split()[0][0].isalnum()]
            for step, text in zip(steps.split(","), sections.values(), strict=True)}
    # speed: convnet16 at B = 1, 2; clipping: four models at B = 2; restarts: lenet; double: five layers
    assert [r[:2] for r in rows["speed"][2:]] == [["convnet16", "1"], ["convnet16", "2"]]
    assert [r[:2] for r in rows["clipping"][2:]] == [["lenet", "2"], ["convnet16", "2"], ["convnet64", "2"],
                                                      ["resnet18", "2"]]
    assert rows["restarts"][-1][0] == "lenet" and rows["restarts"][-1][-2] == "batched"
    assert len(rows["double"]) == 2 + 5 and all(float(r[-1]) < 1e-5 for r in rows["double"][2:])
