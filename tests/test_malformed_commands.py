"""Malformed input to the commands other than ``run`` (audit, utility, compare, leaderboard, show, train-generator,
regress and the Ray executor), each through the real command line: exit code 2 and one line on stderr naming the
problem, before any work, never a traceback."""

import time
from pathlib import Path

import pytest

from giabench.app import cli
from giabench.store import Store

BASELINE = str(Path(__file__).resolve().parents[1] / "leaderboard" / "baselines" / "smoke.csv")
MODELS = '''
import torch
from torch import nn

class NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")

def dense():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

def nan_logits():
    return NaNNet()

def integer_logits():
    return IntegerNet()

class IntegerNet(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 10, dtype=torch.long)

def returns_int():
    return 3

NOT_CALLABLE = 7
'''


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A folder with the user's model file, a run folder with a database, a corrupt database and other files."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "nets.py").write_text(MODELS)
    (root / "broken.py").write_text("def make(:\n")
    (root / "empty.yaml").write_text("")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81" * 8)
    (root / "a_file").write_text("not a folder")
    (root / "not_a_tensor.pt").write_text("no tensors here")
    (root / "utility.csv").write_text("defense,accuracy\nnone,0.5\n")
    Store(root / "empty_run")  # a results database with no cells
    (root / "corrupt_run").mkdir()
    (root / "corrupt_run" / "results.sqlite").write_bytes(b"this is not sqlite" * 64)
    (root / "no_db").mkdir()
    (root / "runs").mkdir()
    return root


def _utility(place, name: str, body: str) -> str:
    path = place / f"{name}.yaml"
    path.write_text(body)
    return str(path)


UTILITY_BASE = "dataset: mnist-sample\nmodel: {name: mlp, width: 8}\nrounds: 1\nclients: 2\nbatch: 2\n"
AUDIT = ["audit", "--data", "mnist-sample", "--budget", "quick", "--quiet"]

# (id, argv with {P} for the inputs folder, expected fragment of the one error line)
CASES = [
    # audit: the model factory
    ("audit-path-missing", AUDIT + ["--model", "./no_such_file.py:make", "--out", "{P}/o"], "looks like a path"),
    ("audit-path-folder", AUDIT + ["--model", "{P}/no_db:make", "--out", "{P}/o"], "looks like a path"),
    ("audit-no-colon", AUDIT + ["--model", "nets", "--out", "{P}/o"], "expected MODULE:FUNCTION"),
    ("audit-no-module", AUDIT + ["--model", ":dense", "--out", "{P}/o"], "expected MODULE:FUNCTION"),
    ("audit-no-function", AUDIT + ["--model", "{P}/nets.py:", "--out", "{P}/o"], "expected MODULE:FUNCTION"),
    ("audit-unknown-module", AUDIT + ["--model", "no_such_module_xyz:make", "--out", "{P}/o"],
     "cannot import module 'no_such_module_xyz'"),
    ("audit-syntax-error", AUDIT + ["--model", "{P}/broken.py:make", "--out", "{P}/o"], "raised SyntaxError"),
    ("audit-missing-function", AUDIT + ["--model", "{P}/nets.py:nope", "--out", "{P}/o"], "has no 'nope'"),
    ("audit-not-callable", AUDIT + ["--model", "{P}/nets.py:NOT_CALLABLE", "--out", "{P}/o"], "not a function"),
    ("audit-not-a-module", AUDIT + ["--model", "{P}/nets.py:returns_int", "--out", "{P}/o"],
     "not a torch.nn.Module"),
    ("audit-nan-logits", AUDIT + ["--model", "{P}/nets.py:nan_logits", "--out", "{P}/o"], "NaN or infinite logits"),
    ("audit-integer-logits", AUDIT + ["--model", "{P}/nets.py:integer_logits", "--out", "{P}/o"],
     "not floating point"),
    ("audit-weights-not-tensors", AUDIT + ["--model", "{P}/nets.py:dense", "--weights", "{P}/not_a_tensor.pt",
                                           "--out", "{P}/o"], "not a torch tensor file"),
    ("audit-weights-missing", AUDIT + ["--model", "{P}/nets.py:dense", "--weights", "{P}/none.pt", "--out",
                                       "{P}/o"], "no such file"),
    # audit: the other options
    ("audit-batch-empty", AUDIT + ["--model", "{P}/nets.py:dense", "--batch-sizes", "", "--out", "{P}/o"],
     "--batch-sizes"),
    ("audit-batch-zero", AUDIT + ["--model", "{P}/nets.py:dense", "--batch-sizes", "0,2", "--out", "{P}/o"],
     "--batch-sizes"),
    ("audit-defense-unknown", AUDIT + ["--model", "{P}/nets.py:dense", "--defenses", "nosuch", "--out", "{P}/o"],
     "unknown defense 'nosuch'"),
    ("audit-defense-bad-value", AUDIT + ["--model", "{P}/nets.py:dense", "--defenses", "dp-sgd:noise_multiplier=-1",
                                         "--out", "{P}/o"], "noise_multiplier"),
    ("audit-defense-bad-key", AUDIT + ["--model", "{P}/nets.py:dense", "--defenses", "prune:bogus=1", "--out",
                                       "{P}/o"], "unknown parameter 'bogus'"),
    ("audit-defense-none-named", AUDIT + ["--model", "{P}/nets.py:dense", "--defenses", ",", "--out", "{P}/o"],
     "name at least one defense"),
    ("audit-epochs-with-fedsgd", AUDIT + ["--model", "{P}/nets.py:dense", "--epochs", "2", "--out", "{P}/o"],
     "--protocol is fedsgd"),
    ("audit-shuffle-with-fedsgd", AUDIT + ["--model", "{P}/nets.py:dense", "--shuffle", "--out", "{P}/o"],
     "--protocol is fedsgd"),
    ("audit-fedavg-epochs-zero", AUDIT + ["--model", "{P}/nets.py:dense", "--protocol", "fedavg", "--epochs", "0",
                                          "--out", "{P}/o"], "epochs"),
    ("audit-fedavg-lr-negative", AUDIT + ["--model", "{P}/nets.py:dense", "--protocol", "fedavg", "--lr", "-1",
                                          "--out", "{P}/o"], "lr"),
    ("audit-threads-zero", AUDIT + ["--model", "{P}/nets.py:dense", "--threads", "0", "--out", "{P}/o"],
     "--threads"),
    ("audit-workers-zero", AUDIT + ["--model", "{P}/nets.py:dense", "--workers", "0", "--out", "{P}/o"],
     "--workers"),
    ("audit-unknown-data", ["audit", "--data", "nosuch-data", "--model", "{P}/nets.py:dense", "--out", "{P}/o"],
     "unknown dataset 'nosuch-data'"),
    ("audit-out-is-a-file", AUDIT + ["--model", "{P}/nets.py:dense", "--out", "{P}/a_file"], "is a file"),
    # utility
    ("utility-empty", ["utility", "{P}/empty.yaml", "--out", "{P}/u"], "is empty"),
    ("utility-missing", ["utility", "{P}/none.yaml", "--out", "{P}/u"], "no such file"),
    ("utility-folder", ["utility", "{P}/no_db", "--out", "{P}/u"], "is a directory"),
    ("utility-binary", ["utility", "{P}/binary.yaml", "--out", "{P}/u"], "not a UTF-8 text file"),
    ("utility-malformed", ["utility", "U:rounds: [1\n", "--out", "{P}/u"], "malformed YAML"),
    ("utility-list", ["utility", "U:- a\n- b\n", "--out", "{P}/u"], "expected a mapping"),
    ("utility-unknown-field", ["utility", "U:" + UTILITY_BASE + "epochs: 3\n", "--out", "{P}/u"],
     "unknown field 'epochs'"),
    ("utility-rounds-zero", ["utility", "U:dataset: mnist-sample\nrounds: 0\n", "--out", "{P}/u"], "rounds"),
    ("utility-clients-text", ["utility", "U:dataset: mnist-sample\nclients: four\n", "--out", "{P}/u"], "clients"),
    ("utility-server-lr", ["utility", "U:dataset: mnist-sample\nserver_lr: -1\n", "--out", "{P}/u"], "server_lr"),
    ("utility-test-fraction", ["utility", "U:dataset: mnist-sample\ntest_fraction: 1.5\n", "--out", "{P}/u"],
     "test_fraction"),
    ("utility-no-defenses", ["utility", "U:" + UTILITY_BASE + "defenses: []\n", "--out", "{P}/u"], "defenses"),
    ("utility-unknown-defense", ["utility", "U:" + UTILITY_BASE + "defenses: [nosuch]\n", "--out", "{P}/u"],
     "unknown defense 'nosuch'"),
    ("utility-defense-value", ["utility", "U:" + UTILITY_BASE + "defenses: [{name: dp-sgd, clip: x}]\n", "--out",
                               "{P}/u"], "clip"),
    ("utility-unknown-model", ["utility", "U:dataset: mnist-sample\nmodel: nosuch\n", "--out", "{P}/u"],
     "unknown model 'nosuch'"),
    ("utility-model-state", ["utility", "U:dataset: mnist-sample\nmodel: {name: mlp, state: 'trained:5'}\n",
                             "--out", "{P}/u"], "drop model state"),
    ("utility-unknown-protocol", ["utility", "U:dataset: mnist-sample\nprotocol: nosuch\n", "--out", "{P}/u"],
     "unknown protocol 'nosuch'"),
    ("utility-protocol-value", ["utility", "U:dataset: mnist-sample\nprotocol: {name: fedavg, epochs: 0}\n",
                                "--out", "{P}/u"], "epochs"),
    ("utility-unknown-dataset", ["utility", "U:dataset: nosuch\n", "--out", "{P}/u"], "unknown dataset 'nosuch'"),
    ("utility-too-many-clients", ["utility", "U:dataset: mnist-sample\nclients: 500\n", "--out", "{P}/u"],
     "cannot feed 500 clients"),
    ("utility-threads-zero", ["utility", "U:" + UTILITY_BASE, "--threads", "0", "--out", "{P}/u"], "--threads"),
    ("utility-out-is-a-file", ["utility", "U:" + UTILITY_BASE, "--out", "{P}/a_file"], "is a file"),
    # compare
    ("compare-missing", ["compare", "{P}/none", "{P}/empty_run"], "no such run folder"),
    ("compare-file", ["compare", "{P}/empty_run", "{P}/a_file"], "is a file, not a run folder"),
    ("compare-no-database", ["compare", "{P}/no_db", "{P}/empty_run"], "is it a giabench run folder"),
    ("compare-corrupt", ["compare", "{P}/corrupt_run", "{P}/empty_run"], "not a giabench results database"),
    ("compare-csv-folder-missing", ["compare", "{P}/empty_run", "{P}/empty_run", "--csv", "{P}/nowhere/c.csv"],
     "does not exist"),
    ("compare-csv-is-a-folder", ["compare", "{P}/empty_run", "{P}/empty_run", "--csv", "{P}/no_db"],
     "not a folder"),
    # leaderboard
    ("leaderboard-missing", ["leaderboard", "{P}/none"], "no such run folder"),
    ("leaderboard-no-database", ["leaderboard", "{P}/no_db"], "is it a giabench run folder"),
    ("leaderboard-no-cells", ["leaderboard", "{P}/empty_run"], "no finished cells yet"),
    ("leaderboard-utility-missing", ["leaderboard", "{P}/empty_run", "--utility", "{P}/none.csv"], "no such file"),
    ("leaderboard-utility-columns", ["leaderboard", "{P}/empty_run", "--utility", "{P}/utility.csv"],
     "missing column"),
    ("leaderboard-utility-binary", ["leaderboard", "{P}/empty_run", "--utility", "{P}/binary.yaml"],
     "utility table"),
    # show
    ("show-empty", ["show", "", "--runs", "{P}/runs"], "hexadecimal"),
    ("show-not-hex", ["show", "xyz!", "--runs", "{P}/runs"], "hexadecimal"),
    ("show-runs-missing", ["show", "abc", "--runs", "{P}/none"], "no such folder"),
    ("show-no-match", ["show", "abc", "--runs", "{P}/runs"], "no cell 'abc'"),
    # train-generator
    ("gan-suffix", ["train-generator", "--dataset", "mnist-sample", "--out", "{P}/g.pth"], "must end in .pt"),
    ("gan-out-folder", ["train-generator", "--dataset", "mnist-sample", "--out", "{P}/no_db"], "must end in .pt"),
    ("gan-epochs", ["train-generator", "--dataset", "mnist-sample", "--out", "{P}/g.pt", "--epochs", "0"],
     "--epochs"),
    ("gan-lr-zero", ["train-generator", "--dataset", "mnist-sample", "--out", "{P}/g.pt", "--lr", "0"], "--lr"),
    ("gan-lr-nan", ["train-generator", "--dataset", "mnist-sample", "--out", "{P}/g.pt", "--lr", "nan"], "--lr"),
    ("gan-seed", ["train-generator", "--dataset", "mnist-sample", "--out", "{P}/g.pt", "--seed", "-1"], "--seed"),
    ("gan-threads", ["train-generator", "--dataset", "mnist-sample", "--out", "{P}/g.pt", "--threads", "0"],
     "--threads"),
    ("gan-unknown-dataset", ["train-generator", "--dataset", "nosuch", "--out", "{P}/g.pt"],
     "unknown dataset 'nosuch'"),
    ("gan-batch-too-large", ["train-generator", "--dataset", "mnist-sample", "--out", "{P}/g.pt", "--batch",
                             "100000"], "has only"),
    # regress and the Ray executor
    ("regress-baseline-missing", ["regress", "--suite", "smoke", "--baseline", "{P}/none.csv"], "none.csv"),
    ("regress-update-folder-missing", ["regress", "--suite", "smoke", "--baseline", "{P}/nowhere/b.csv", "--update"],
     "does not exist"),
    ("ray-address-malformed", ["run", "smoke", "--executor", "ray", "--address", "no-port-here", "--out", "{P}/r"],
     "expected auto, HOST:PORT"),
    ("ray-address-port-range", ["run", "smoke", "--executor", "ray", "--address", "127.0.0.1:70000", "--out",
                                "{P}/r"], "expected auto, HOST:PORT"),
    ("ray-address-refused", ["run", "smoke", "--executor", "ray", "--address", "127.0.0.1:9", "--out", "{P}/r"],
     "no Ray cluster answers there"),
    ("ray-address-without-ray", ["run", "smoke", "--address", "127.0.0.1:9", "--out", "{P}/r"],
     "it needs --executor ray"),
    ("regress-ray-refused", ["regress", "--suite", "smoke", "--baseline", BASELINE,
                             "--executor", "ray", "--address", "127.0.0.1:9"], "no Ray cluster answers there"),
]


def _argv(place, argv: list[str]) -> list[str]:
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith("U:"):  # an inline utility file
            arg = _utility(place, f"utility{i}", arg[2:])
        out.append(arg.replace("{P}", str(place)))
    return out


@pytest.mark.parametrize("argv,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(place, capsys, argv, message):
    start = time.perf_counter()
    code = cli.main(_argv(place, argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert time.perf_counter() - start < 30  # a Ray address that does not answer fails fast too
    assert not (place / "o" / "results.sqlite").exists() and not (place / "u" / "utility.csv").exists()


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
