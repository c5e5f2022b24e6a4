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
                           "grid": {"defense": ["none", {"name": "dp-sgd"}], "seed": [0, 1, 2]}})
    runner.run_suite(loaded, out, runner.Environment(), show_progress=False)
    return out


def test_csv_has_one_row_per_cell_with_the_public_columns(run_dir):
    frame = tables.cells(run_dir)
    assert len(frame) == 6 and list(frame.columns[:16]) == tables.CSV_COLUMNS[:16]
    ranking = tables.ranking(frame)
    assert list(ranking["defense"]) == ["none", "dp-sgd"] and list(ranking["cells"]) == [3, 3]
    assert ranking["epsilon"].iloc[1] < float("inf")


def test_html_report_escapes_and_embeds_images(run_dir, tmp_path):
    frame = tables.cells(run_dir)
    frame.loc[0, "defense_params"] = '<script>alert("x")</script>'
    frame.loc[1, "image"] = "../../etc/passwd"
    report.write(frame, run_dir, tmp_path / "r.html", title="<b>t</b>")
    page = (tmp_path / "r.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page and "&lt;b&gt;t&lt;/b&gt;" in page
    assert page.count('class="grid" src="data:image/png;base64,') == 5  # the path outside the run folder is not read
    assert '<meta name="viewport"' in page  # and three sortable tables: the defense summary, ranking, label track
    assert page.count('class="sortable filterable"') == 3
    assert page.count('<table class="matrix">') == 1 and "±" in page and 'class="tiles"' in page
    assert "200.000" not in page and ">20<" in page  # integers as integers (the budget)


def test_gate_summarizes_each_setting_over_its_seeds(run_dir):
    summary = regress.summarize(tables.cells(run_dir))
    assert list(summary["defense"]) == ["none", "dp-sgd"] and list(summary["cells"]) == [3, 3]
    assert set(summary["judge"]) == {"aggregate"} and (summary["psnr_n"] == 3).all()
    assert (summary["psnr_mean"] <= 40).all()  # aggregate PSNR enters clipped at the exact-recovery threshold
    tol = summary["psnr_tol"]
    assert (tol >= regress.FLOOR["psnr"]).all() and (tol >= regress.K * summary["psnr_std"] / 3 ** 0.5 - 1e-9).all()
    assert (summary["label_acc_tol"] == 0).all()  # known labels: exact
    assert summary.loc[1, "epsilon"] < float("inf") and summary.loc[1, "adjacency"] == "add-remove"
    regress.check_baseline(summary)
    with pytest.raises(GiabenchError, match=">= 3 seeds"):
        regress.check_baseline(summary.assign(cells=2))


def test_gate_flags_weaker_attacks_leakier_defenses_and_changed_costs(run_dir):
    summary = regress.summarize(tables.cells(run_dir))
    assert regress.compare(summary, summary) == ([], [])
    higher = summary.assign(psnr_mean=summary["psnr_mean"] + summary["psnr_tol"] + 0.01)
    failures, _ = regress.compare(summary, higher)
    assert len(failures) == 2 and all(f.startswith("weaker: ig") and "psnr" in f for f in failures)
    failures, notes = regress.compare(higher, summary)
    assert failures == [next(f for f in failures if "privacy regression: defense dp-sgd leaks more" in f)]
    assert len(notes) == 1 and notes[0].startswith("stronger: ig")
    within = summary.assign(psnr_mean=summary["psnr_mean"] - 0.9 * summary["psnr_tol"])
    assert regress.compare(within, summary) == ([], [])
    labels = regress.compare(summary.assign(label_acc_mean=0.5), summary)[0]
    assert len(labels) == 2 and all("label_acc" in f for f in labels)
    costly = summary.assign(epsilon=summary["epsilon"] * 1.01, bytes=summary["bytes"] + 4)
    changed = regress.compare(costly, summary)[0]
    assert sum("epsilon" in f for f in changed) == 1 and sum("bytes" in f for f in changed) == 2
    assert regress.compare(summary.iloc[1:], summary)[0] == [f"missing setting: {regress._name(summary.iloc[0])}"]
    assert regress.compare(summary.iloc[1:], summary, partial=True) == ([], [])
    assert regress.compare(summary, summary.iloc[1:])[0][0].startswith("new setting not in the baseline")
    assert "cells" in regress.compare(summary.assign(cells=4), summary)[0][0]


def test_baseline_round_trips_through_csv(run_dir, tmp_path):
    summary = regress.summarize(tables.cells(run_dir))
    regress.write_baseline(summary, tmp_path / "b.csv")
    assert regress.compare(summary, regress.read_baseline(tmp_path / "b.csv")) == ([], [])
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(GiabenchError, match="missing column 'attack'"):
        regress.read_baseline(tmp_path / "bad.csv")


def test_exact_settings_compare_tightly_in_both_directions(run_dir):
    summary = regress.summarize(tables.cells(run_dir)).assign(judge="exact", attack="fc-invert")
    summary = summary.assign(psnr_tol=regress.EXACT_TOLERANCE["psnr"], exact_mean=1.0, exact_tol=0.0)
    more = regress.compare(summary.assign(exact_mean=2.0), summary)[0]
    assert any(f.startswith("changed: fc-invert") and "exact" in f for f in more)
    assert any(f.startswith("weaker: fc-invert") for f in regress.compare(summary.assign(exact_mean=0.0), summary)[0])
    assert regress.compare(summary.assign(psnr_mean=summary["psnr_mean"] + 0.01), summary) == ([], [])


def test_label_track_keeps_defense_settings_apart():
    row = {"attack": "idlg", "attack_params": "{}", "defense": "prune", "dataset": "d", "model": "m",
           "model_params": "{}", "batch_size": 1, "distinct_labels": 1, "label_set_acc": 1.0}
    frame = pd.DataFrame([{**row, "defense_params": json.dumps({"fraction": f}), "label_acc": acc}
                          for f, acc in ((0.9, 1.0), (0.9, 1.0), (0.99, 0.0))])
    track = tables.label_track(frame)
    assert sorted(zip(track["defense_params"], track["label_acc"], track["cells"], strict=True)) == [
        ('{"fraction": 0.99}', 0.0, 1), ('{"fraction": 0.9}', 1.0, 2)]


def test_compare_flags_the_settings_that_moved_beyond_tolerance(run_dir):
    from giabench.leaderboard import compare

    frame = tables.cells(run_dir)
    same = compare.compare(frame, frame)
    assert len(same) == 2 and (same["changed"] == "").all() and (same["psnr_change"] == 0).all()
    weaker = frame.assign(psnr=frame["psnr"].where(frame["defense"] != "none", frame["psnr"] - 15))
    moved = compare.compare(frame, weaker.iloc[:-1])
    first = moved.iloc[0]
    assert first["setting"].startswith("ig (iterations=20, tv=0) vs none") and "psnr" in first["changed"]
    assert first["psnr_change"] < -10 and set(moved["in"]) == {"both"}
    assert "compare" not in compare.terminal(moved) and "->" in compare.terminal(moved)
    assert set(compare.compare(frame, frame[frame["defense"] == "none"])["in"]) == {"both", "A only"}


def test_the_defense_summary_has_one_row_per_defense_setting_most_leakage_first(run_dir):
    from giabench.leaderboard import summary
    from giabench.store import Store

    frame, images = tables.cells(run_dir), Store(run_dir).images()
    table = summary.defense_summary(frame, images)
    assert list(table["defense"]) == ["none", "dp-sgd"] and table["psnr"].is_monotonic_decreasing
    none, dp = table.iloc[0], table.iloc[1]
    means = frame.groupby("defense")["psnr"].mean()
    assert none["psnr"] == pytest.approx(means["none"]) and dp["psnr"] == pytest.approx(means["dp-sgd"])
    hits = images[images["cell"].isin(frame[frame["defense"] == "none"]["cell"])]["psnr"] > 25
    assert none["above"] == pytest.approx(hits.mean()) and none["images"] == 3
    assert none["epsilon"] == float("inf") and pd.isna(none["delta"]) and none["adjacency"] == ""
    assert dp["epsilon"] < float("inf") and dp["delta"] == 1e-5 and dp["adjacency"] == "add-remove"
    assert pd.isna(none["accuracy"])  # no utility run given


def test_every_mean_carries_its_interval_and_the_summary_says_which_rows_it_can_tell_apart(run_dir):
    from giabench.leaderboard import summary
    from giabench.store import Store

    frame, images = tables.cells(run_dir), Store(run_dir).images()
    ranking = tables.ranking(frame, images)
    assert ((ranking["psnr_lo"] <= ranking["psnr"]) & (ranking["psnr"] <= ranking["psnr_hi"])).all()
    table = summary.defense_summary(frame, images)
    none = table.iloc[0]
    assert none["psnr_lo"] <= none["psnr"] <= none["psnr_hi"] and none["above_lo"] <= none["above"] <= none["above_hi"]
    # none and dp-sgd ran IG on the same three images (dataset, selection, batch size, seeds): a paired test
    assert none["versus_next"].startswith(("apart:", "cannot be told apart:")) and "3 shared images" in \
        none["versus_next"] and table.iloc[1]["versus_next"] == ""
    undefended = frame[frame["defense"] == "none"]
    same = pd.concat([undefended, undefended.assign(defense_params='{"sigma": 0.0}', defense="gauss",
                                                    cell=undefended["cell"] + "g")])
    twin = pd.concat([images, images.assign(cell=images["cell"] + "g")])
    paired = summary.defense_summary(same, twin)
    assert paired.iloc[0]["versus_next"].startswith("cannot be told apart: +0.00 dB")
