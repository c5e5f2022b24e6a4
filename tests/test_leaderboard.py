import json

import pandas as pd
import pytest

from giabench import runner, suite
from giabench.errors import GiabenchError
from giabench.leaderboard import regress, report, tables


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    loaded = suite.expand({"name": "t", "defaults": {"dataset": "mnist-sample", "model": {"name": "mlp", "width": 16},
                                                     "attack": {"name": "ig", "iterations": 20, "tv": 0.0}},
                           "grid": {"defense": ["none", {"name": "dp-sgd"}], "seed": [0, 1]}})
    runner.run_suite(loaded, out, runner.Environment(), show_progress=False)
    return out


def test_csv_has_one_row_per_cell_with_the_public_columns(run_dir):
    frame = tables.cells(run_dir)
    assert len(frame) == 4 and list(frame.columns[:16]) == tables.CSV_COLUMNS[:16]
    ranking = tables.ranking(frame)
    assert list(ranking["defense"]) == ["none", "dp-sgd"] and list(ranking["cells"]) == [2, 2]
    assert ranking["epsilon"].iloc[1] < float("inf")


def test_html_report_escapes_and_embeds_images(run_dir, tmp_path):
    frame = tables.cells(run_dir)
    frame.loc[0, "defense_params"] = '<script>alert("x")</script>'
    frame.loc[1, "image"] = "../../etc/passwd"
    report.write(frame, run_dir, tmp_path / "r.html", title="<b>t</b>")
    page = (tmp_path / "r.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page and "&lt;b&gt;t&lt;/b&gt;" in page
    assert page.count("data:image/png;base64,") == 3  # the path outside the run folder is not read


def test_regression_gate_flags_weaker_attacks(run_dir):
    frame = tables.cells(run_dir)
    assert regress.compare(frame, frame) == []
    stronger_baseline = frame.assign(psnr=frame["psnr"] + 1.5)
    failures = regress.compare(frame, stronger_baseline)
    assert len(failures) == 4 and all("psnr" in f for f in failures)
    assert regress.compare(frame, frame.assign(psnr=frame["psnr"] + 0.5)) == []
    labels = regress.compare(frame.assign(label_acc=0.5), frame)
    assert len(labels) == 4 and all("label_acc" in f for f in labels)
    assert regress.compare(frame.iloc[1:], frame)[0].startswith("missing cell")


def test_baseline_round_trips_through_csv(run_dir, tmp_path):
    frame = tables.cells(run_dir)
    tables.write_csv(frame, tmp_path / "b.csv")
    assert regress.compare(frame, regress.read_baseline(tmp_path / "b.csv")) == []
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(GiabenchError, match="missing column 'attack'"):
        regress.read_baseline(tmp_path / "bad.csv")


def test_regression_gate_ignores_float_noise_in_exact_reconstructions(run_dir):
    frame = tables.cells(run_dir)
    exact = frame.assign(psnr=160.0)
    assert regress.compare(exact.assign(psnr=140.0), exact) == []
    assert len(regress.compare(exact.assign(psnr=70.0), exact)) == len(frame)


def test_label_track_keeps_defense_settings_apart():
    row = {"attack": "idlg", "attack_params": "{}", "defense": "prune", "dataset": "d", "model": "m",
           "model_params": "{}", "batch_size": 1, "distinct_labels": 1, "label_set_acc": 1.0}
    frame = pd.DataFrame([{**row, "defense_params": json.dumps({"fraction": f}), "label_acc": acc}
                          for f, acc in ((0.9, 1.0), (0.9, 1.0), (0.99, 0.0))])
    track = tables.label_track(frame)
    assert sorted(zip(track["defense_params"], track["label_acc"], track["cells"], strict=True)) == [
        ('{"fraction": 0.99}', 0.0, 1), ('{"fraction": 0.9}', 1.0, 2)]
