"""giabench audit end to end on a model defined here (a factory in a module the test writes), at the quick budget:
the battery its architecture calls for, the verdicts, the report files, a rerun through the suite it wrote, and
bad inputs answered with exit 2 and one line."""

import sys

import pytest
import yaml

from giabench import components
from giabench.app import audit, cli
from giabench.app.audit import battery
from giabench.errors import ConfigError

MODULE = '''
import torch
from torch import nn

def fully_connected():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 32), nn.ReLU(), nn.Linear(32, 10))

def raises():
    raise ValueError("needs a config file")

def seven_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 7))
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "audit_user_model.py").write_text(MODULE)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("audit_user_model", None)


@pytest.fixture(scope="module")
def audited(user_module, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "run"
    code = cli.main(["audit", "--model", "audit_user_model:fully_connected", "--budget", "quick",
                     "--batch-sizes", "1,4", "--defenses", "none,dp-sgd:noise_multiplier=1", "--out", str(out),
                     "--quiet"])
    return code, out


def test_the_battery_follows_the_architecture(audited):
    code, out = audited
    assert code == 0
    suite = yaml.safe_load((out / "audit-suite.yaml").read_text())
    attacks = {entry["attack"] if isinstance(entry["attack"], str) else entry["attack"]["name"]
               for entry in suite["grid"]}
    # gias: dcgan-patches is 3x32x32; spear and cpa: 32 ReLU units take a batch of 4; fishing: FedSGD
    assert attacks == {"fc-invert", "infer-labels", "idlg", "ig", "fedleak", "rtf", "gias", "spear", "cpa", "fishing"}
    report = (out / "audit.md").read_text()
    assert "- rgap: layer 2 (ReLU) is not invertible" in report


def test_the_verdicts_name_what_each_attacker_reconstructs(audited):
    _, out = audited
    report = (out / "audit.md").read_text()
    verdicts = [line for line in report.splitlines() if line.startswith("- ") and "(" in line and "):" in line]
    assert [v.split(":")[0] for v in verdicts] == ["- Eavesdropper (A)", "- Informed Eavesdropper (B)",
                                                    "- Data-Enhanced Eavesdropper (D)", "- Active Manipulator (F)",
                                                    "- Data-Enhanced Manipulator (G)"]
    # a fully connected first layer with a bias, then ReLU: SPEAR rebuilds the whole batch of 4 exactly
    assert "reconstructs 4 of 4 images of a batch of 4" in verdicts[0] and "(SPEAR" in verdicts[0]
    assert "Labels:" in verdicts[0]
    table = report[report.index("| defense |"):]
    none, dp = (next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
                for name in ("none", "dp-sgd"))
    assert "| inf |" in none and "| 4.73 |" in dp and "add-remove" in dp


def test_the_report_files_and_a_rerun_of_the_suite_it_wrote(audited):
    _, out = audited
    for name in ("audit.md", "audit-suite.yaml", "leaderboard.html", "leakage_batch.svg", "leakage_steps.svg",
                 "results.sqlite", "utility/utility.csv"):
        assert (out / name).is_file(), name
    assert cli.main(["run", str(out / "audit-suite.yaml"), "--out", str(out), "--quiet"]) == 0  # all cells stored


def test_a_convolutional_first_layer_rules_out_linear_layer_inversion():
    from torch import nn

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    entries, skipped = battery(net, (3, 32, 32), {"name": "fedsgd"}, [1, 8], "quick")
    names = {e["attack"] if isinstance(e["attack"], str) else e["attack"]["name"] for e in entries}
    assert "fc-invert" not in names and "rgap" in names  # LeakyReLU and convolutions: R-GAP applies at batch 1
    reasons = dict(skipped)
    assert reasons.pop("fc-invert") == "the first layer is Conv2d, not fully connected with a bias"
    assert reasons.pop("spear") == "the first layer is Conv2d, not fully connected with a bias"
    assert "cpa" in names  # the head's 10 units mix the trunk's features of up to 10 images
    assert reasons.pop("gradinversion").startswith("the model has no batch-norm layer")
    assert reasons.pop("fedavg-invert") == "it inverts multi-step FedAvg updates (protocol fedavg)"
    # the rest sit audits out by their own word (for_audit), each saying which attack of the battery stands for it
    assert set(reasons) == {"dlg", "ggl", "gifd", "hyperfl-invert"}
    assert all(reason.startswith("not in the battery: ") for reason in reasons.values())
    entries, skipped = battery(net, (3, 32, 32), {"name": "fedavg", "epochs": 1, "batch_size": 0, "lr": 0.1}, [8],
                               "quick")
    assert dict(skipped)["rgap"] == "it inverts a FedSGD gradient" and dict(skipped)["idlg"] == "its label rule " \
                                                                                                "needs batch 1"


@pytest.mark.parametrize("arguments,message", [
    (["--model", "no_such_module_here:make"], "cannot import module 'no_such_module_here'"),
    (["--model", "audit_user_model:raises"], "the factory raised ValueError: needs a config file"),
    (["--model", "audit_user_model:seven_classes"], "the output for 2 images is (2, 7), expected (2, 10)"),
    (["--model", "audit_user_model:fully_connected", "--weights", "WEIGHTS"], "not a torch tensor file"),
    (["--model", "audit_user_model:missing"], "module 'audit_user_model' has no 'missing'"),
    (["--model", "audit_user_model:fully_connected", "--batch-sizes", "1,x"], "--batch-sizes"),
])
def test_bad_inputs_exit_2_with_one_line(user_module, tmp_path, capsys, arguments, message):
    (tmp_path / "weights.pt").write_text("not a tensor file")
    arguments = [str(tmp_path / "weights.pt") if a == "WEIGHTS" else a for a in arguments]
    assert cli.main(["audit", *arguments, "--budget", "quick", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_defense_settings_parse_and_bad_ones_are_named():
    def parse_defenses(text):
        return audit.parse_defenses(text, components.protocol("fedsgd", {}), [1, 8])

    with pytest.raises(ConfigError, match="--defenses: defense secagg: the batch \\(1\\) must hold at least one"):
        parse_defenses("secagg")  # checked against every audited batch size
    assert parse_defenses("none,dp-sgd:noise_multiplier=0.5;clip=2,prune:fraction=0.9") == [
        {"name": "none"}, {"name": "dp-sgd", "noise_multiplier": 0.5, "clip": 2}, {"name": "prune", "fraction": 0.9}]
    with pytest.raises(ConfigError, match="NAME:KEY=VALUE"):
        parse_defenses("dp-sgd:noise_multiplier")


def test_a_users_transformer_is_audited_on_text_with_rouge_verdicts(tmp_path):
    """A 2-block decoder from a .py file (tests/data/user_transformer.py builds it from giabench's blocks) on the
    austen sentences: the text battery runs and the verdicts count sequences by ROUGE-1."""
    out = tmp_path / "run"
    code = cli.main(["audit", "--model", "tests/data/user_transformer.py:make_model", "--data", "austen",
                     "--budget", "quick", "--batch-sizes", "2", "--defenses", "none", "--out", str(out), "--quiet"])
    assert code == 0
    grid = yaml.safe_load((out / "audit-suite.yaml").read_text())["grid"]
    assert {e["attack"] if isinstance(e["attack"], str) else e["attack"]["name"] for e in grid} == {"dager", "tag",
                                                                                                    "lamp"}
    report = (out / "audit.md").read_text()
    assert "a sequence counts as reconstructed at ROUGE-1 50 or more" in report
    assert "Eavesdropper (A): reconstructs 2 of 2 sequences of a batch of 2 at ROUGE-1 50 or more (DAGER)" in report
