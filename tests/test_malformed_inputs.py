"""Malformed inputs, each through the real command line: exit code 2, one line on stderr naming the problem (and, for
a suite file, the file and the line of the offending value), never a traceback and never silently accepted. Every
case fails before any cell runs."""

import re
import sqlite3

import pytest
import torch

from giabench.app import cli

SUITE_LINE = re.compile(r"s\.yaml:\d+: ")


def _suite(body: str, header: str = "name: t\n") -> str:
    return header + body


def _defaults(fields: str) -> str:
    """A suite whose defaults hold ``fields`` (YAML flow mapping entries) next to a cheap valid cell."""
    return _suite(f"defaults: {{dataset: mnist-sample, model: {{name: mlp, width: 8}}, "
                  f"attack: {{name: ig, iterations: 1}}, {fields}}}\n")


def _block(component: str, lines: str) -> str:
    """A suite whose ``component`` is written as a block mapping, one parameter per line (line 5 on)."""
    body = "\n".join(f"    {line}" for line in lines.split("; "))
    other = "model: {name: mlp, width: 8}" if component == "attack" else "attack: {name: ig, iterations: 1}"
    return _suite(f"defaults:\n  dataset: mnist-sample\n  {other}\n  {component}:\n{body}\n")


# (id, suite text or None, extra argv, expected fragment, suite-file error: line expected)
CASES = [
    # reading the suite file
    ("duplicate-top-key", "grid: {seed: [0]}\ngrid: {seed: [1]}\n", [], "duplicate key 'grid'", True),
    ("duplicate-default-key", "defaults:\n  seed: 0\n  seed: 1\n", [], "duplicate key 'seed'", True),
    ("unclosed-bracket", "grid:\n  seed: [0, 1\n  attack: ig\n", [], "malformed YAML", True),
    ("tab-indent", "grid:\n\tseed: [0]\n", [], "malformed YAML", True),
    ("suite-is-a-list", "- a\n- b\n", [], "a suite is a mapping", False),
    ("suite-is-a-scalar", "hello\n", [], "a suite is a mapping", False),
    ("empty-file", "", [], "a suite is a mapping", False),
    ("unknown-suite-key", "grdi: {}\n", [], "unknown suite key 'grdi'", True),
    ("defaults-not-mapping", "defaults: [1, 2]\n", [], "defaults must be a mapping", True),
    ("grid-entry-not-mapping", "grid: [1]\n", [], "each grid must be a mapping", False),
    ("grid-field-empty", "grid: {seed: []}\n", [], "grid field 'seed' has no values", True),
    ("unknown-cell-field", "grid: {colour: [red]}\n", [], "unknown cell field 'colour'", True),
    ("component-int", "defaults: {attack: 5}\n", [], "attack must be a name or a mapping", True),
    ("component-name-int", "defaults: {attack: {name: 5}}\n", [], "attack.name must be a string", True),
    # attacks
    ("unknown-attack", "grid: {attack: [deepleak]}\n", [], "unknown attack 'deepleak'", True),
    ("attack-unknown-param", _defaults("seed: 0") + "grid: {attack: [{name: ig, iters: 3}]}\n", [],
     "unknown parameter 'iters'", True),
    ("attack-iterations-string", _block("attack", "name: ig; iterations: many"), [], "expected int", True),
    ("attack-lr-inf", _block("attack", "name: ig; lr: .inf"), [], "expected a finite number", True),
    ("attack-lr-nan", _block("attack", "name: ig; lr: .nan"), [], "expected a finite number", True),
    ("attack-iterations-zero", _block("attack", "name: ig; iterations: 0"), [], "iterations must be >= 1", True),
    ("attack-lr-negative", _block("attack", "name: ig; lr: -1"), [], "lr must be > 0", True),
    ("attack-restarts-zero", _block("attack", "name: ig; restarts: 0"), [], "restarts must be >= 1", True),
    ("attack-tv-negative", _block("attack", "name: ig; tv: -0.1"), [], "tv must be >= 0", True),
    ("ig-labels-bogus", _block("attack", "name: ig; labels: guessed"), [], "labels must be one of known", True),
    ("idlg-label-method", _block("attack", "name: idlg; labels: 'inferred:nope'"), [], "unknown label method 'nope'",
     True),
    ("dlg-iterations-negative", _block("attack", "name: dlg; iterations: -5"), [], "iterations must be >= 1", True),
    ("rtf-bins-one", _block("attack", "name: rtf; bins: 1"), [], "bins must be >= 2", True),
    ("rtf-query-bogus", _block("attack", "name: rtf; query: median"), [], "query must be one of avg", True),
    ("rtf-labels-known", _block("attack", "name: rtf; labels: known"), [], "labels must be inferred", True),
    ("rtf-gain-zero", _block("attack", "name: rtf; gain: 0"), [], "gain must be > 0", True),
    ("gias-generator-unknown", _block("attack", "name: gias; generator: stylegan9"), [], "unknown generator", True),
    ("ggl-population-one", _block("attack", "name: ggl; population: 1"), [], "population must be >= 2", True),
    ("ggl-budget-small", _block("attack", "name: ggl; population: 20; budget: 5"), [],
     "budget must be >= population (20)", True),
    ("gifd-radii-negative", _block("attack", "name: gifd; radii: [-1]"), [], "radii must be a list of positive", True),
    ("infer-labels-method", _block("attack", "name: infer-labels; method: psychic"), [], "method must be one of idlg",
     True),
    ("hyperfl-invert-restarts", _block("attack", "name: hyperfl-invert; restarts: 0"), [], "restarts must be >= 1",
     True),
    # defenses
    ("unknown-defense", _defaults("defense: tinfoil"), [], "unknown defense 'tinfoil'", True),
    ("gauss-sigma-nan", _block("defense", "name: gauss; sigma: .nan"), [], "expected a finite number", True),
    ("gauss-sigma-negative", _block("defense", "name: gauss; sigma: -1"), [], "sigma must be >= 0", True),
    ("prune-fraction-one", _block("defense", "name: prune; fraction: 1.0"), [], "fraction must be in [0, 1)", True),
    ("dp-clip-zero", _block("defense", "name: dp-sgd; clip: 0"), [], "clip must be > 0", True),
    ("dp-noise-negative", _block("defense", "name: dp-sgd; noise_multiplier: -1"), [],
     "noise_multiplier must be >= 0", True),
    ("dp-delta-two", _block("defense", "name: dp-sgd; delta: 2"), [], "delta must be in (0, 1)", True),
    ("dp-sample-rate-zero", _block("defense", "name: dp-sgd; sample_rate: 0"), [], "sample_rate must be in (0, 1]",
     True),
    ("dp-adjacency-bogus", _block("defense", "name: dp-sgd; adjacency: swap"), [], "adjacency must be one of", True),
    ("dp-replace-one-sampled", _block("defense", "name: dp-sgd; adjacency: replace-one; sample_rate: 0.5"), [],
     "add-remove adjacency only", True),
    ("dp-rounds-zero", _block("defense", "name: dp-sgd; rounds: 0"), [], "rounds must be >= 1", True),
    ("sketch-kind-bogus", _block("defense", "name: sketch; kind: fourier"), [], "kind must be one of", True),
    ("sketch-ratio-two", _block("defense", "name: sketch; ratio: 2"), [], "ratio must be in (0, 1]", True),
    ("sketch-noise-bogus", _block("defense", "name: sketch; noise: during"), [], "noise must be one of", True),
    ("diff2-rounds-period", _block("defense", "name: diff2; rounds: 10; period: 10"), [], "rounds must be < period",
     True),
    ("diff2-view-bogus", _block("defense", "name: diff2; view: sideways"), [], "view must be one of", True),
    ("diff2-under-fedavg", _defaults("defense: diff2, protocol: fedavg"), [], "it needs protocol fedsgd", True),
    ("hidenseek-density-zero", _block("defense", "name: hidenseek; density: 0"), [], "density must be in (0, 1]",
     True),
    ("hidenseek-upload-bogus", _block("defense", "name: hidenseek; upload: weights"), [], "upload must be one of",
     True),
    ("hyperfl-embed-zero", _block("defense", "name: hyperfl; embed_dim: 0"), [], "embed_dim must be >= 1", True),
    ("secagg-clients-zero", _block("defense", "name: secagg; clients: 0"), [], "clients must be >= 1", True),
    ("secagg-more-clients-than-batch", _defaults("defense: {name: secagg, clients: 4}, batch_size: 2"), [],
     "must hold at least one image per client", True),
    # models
    ("unknown-model", _defaults("seed: 0") + "grid: {model: [vit]}\n", [], "unknown model 'vit'", True),
    ("mlp-width-negative", _block("model", "name: mlp; width: -4"), [], "width must be >= 1", True),
    ("mlp-depth-negative", _block("model", "name: mlp; depth: -1"), [], "depth must be >= 0", True),
    ("convnet-activation", _block("model", "name: convnet; activation: swish"), [], "activation must be one of",
     True),
    ("convnet-width-zero", _block("model", "name: convnet; width: 0"), [], "width must be >= 1", True),
    ("convnet-pool-bogus", _block("model", "name: convnet; pool: median"), [], "pool must be one of", True),
    ("lenet-channels-zero", _block("model", "name: lenet; channels: 0"), [], "channels must be >= 1", True),
    ("resnet-width", _block("model", "name: resnet18; width: 32"), [], "width must be 64", True),
    ("cnn6-slope", _block("model", "name: cnn6; slope: 1.5"), [], "slope must be in (0, 1)", True),
    ("init-bogus", _block("model", "name: mlp; init: glorot"), [], "init must be one of", True),
    ("mode-bogus", _block("model", "name: mlp; mode: test"), [], "mode must be one of eval, train", True),
    ("state-trained-abc", _block("model", "name: mlp; state: 'trained:abc'"), [], "state must be untrained", True),
    ("state-pretrained", _block("model", "name: mlp; state: pretrained"), [], "state must be untrained", True),
    ("state-int", _block("model", "name: mlp; state: 5"), [], "state must be untrained", True),
    ("checkpoint-missing", _block("model", "name: mlp; state: 'checkpoint:nowhere.pt'"), [], "no such file", True),
    ("checkpoint-not-tensors", "CHECKPOINT:text", [], "not a torch tensor file", True),
    ("checkpoint-wrong-shapes", "CHECKPOINT:other", [], "does not fit the model", True),
    ("model-too-small-images", _block("model", "name: convnet; width: 2")
     .replace("dataset: mnist-sample", "dataset: {name: natural-patches, count: 4, size: 4}"), [],
     "cannot take natural-patches images", True),
    # protocols
    ("unknown-protocol", _defaults("protocol: gossip"), [], "unknown protocol 'gossip'", True),
    ("fedavg-epochs-zero", _block("protocol", "name: fedavg; epochs: 0"), [], "epochs must be >= 1", True),
    ("fedavg-lr-string", _block("protocol", "name: fedavg; lr: fast"), [], "expected float", True),
    ("fedavg-lr-negative", _block("protocol", "name: fedavg; lr: -0.1"), [], "lr must be > 0", True),
    ("fedavg-batch-negative", _block("protocol", "name: fedavg; batch_size: -1"), [], "batch_size must be >= 0",
     True),
    ("fedavg-lr-inf", _block("protocol", "name: fedavg; lr: .inf"), [], "expected a finite number", True),
    ("fedsgd-param", _defaults("protocol: {name: fedsgd, lr: 0.1}"), [], "unknown parameter 'lr'", True),
    # cell scalars
    ("batch-size-string", _defaults("batch_size: two"), [], "batch_size must be int", True),
    ("batch-size-zero", _defaults("batch_size: 0"), [], "batch_size must be at least 1", True),
    ("batch-larger-than-data", _defaults("batch_size: 64"), [], "larger than dataset mnist-sample", True),
    ("seed-negative", _defaults("seed: -1"), [], "seed must be >= 0", True),
    ("seed-float", _defaults("seed: 1.5"), [], "seed must be int", True),
    ("seed-bool", _defaults("seed: true"), [], "seed must be int", True),
    ("selection-bogus", _defaults("selection: best"), [], "selection must be one of", True),
    ("unique-labels-exceed-classes", _defaults("selection: unique, batch_size: 11"), [], "with unique labels exceeds",
     True),
    ("threat-model-unknown", _defaults("threat_model: Z"), [], "threat_model must be one of A, B", True),
    ("threat-model-too-weak", _defaults("threat_model: A"), [], "which threat model A", True),
    # datasets
    ("unknown-dataset", _defaults("seed: 0") + "grid: {dataset: [imagenet-full]}\n", [],
     "unknown dataset 'imagenet-full'", True),
    ("dataset-folder-missing", _defaults("seed: 0") + "grid: {dataset: ['folder:/nonexistent/x']}\n", [],
     "no such directory", True),
    ("dataset-needs-root", _defaults("seed: 0") + "grid: {dataset: [cifar10]}\n", [], "needs a data root", True),
    ("dataset-unknown-param", _defaults("seed: 0") + "grid: {dataset: [{name: mnist-sample, split: val}]}\n", [],
     "unknown parameter 'split'", True),
    ("natural-patches-size", _defaults("seed: 0") + "grid: {dataset: [{name: natural-patches, size: 2}]}\n", [],
     "size must be >= 4", True),
    # the command line
    ("out-empty", _defaults("seed: 0"), ["--out", ""], "--out must name a folder", False),
    ("out-is-a-file", _defaults("seed: 0"), ["--out", "FILE"], "is a file, not a run folder", False),
    ("out-unwritable", _defaults("seed: 0"), ["--out", "/proc/giabench/x"], "cannot create the run folder", False),
    ("out-corrupt-database", _defaults("seed: 0"), ["--out", "CORRUPT"], "not a giabench results database", False),
    ("out-foreign-database", _defaults("seed: 0"), ["--out", "FOREIGN"], "not a giabench results database", False),
    ("threads-zero", _defaults("seed: 0"), ["--threads", "0"], "--threads must be a whole number >= 1", False),
    ("workers-zero", _defaults("seed: 0"), ["--workers", "0"], "--workers must be at least 1", False),
]


def _prepare(tmp_path, text: str) -> str:
    """Write the suite (and the checkpoint a case names) and return its path."""
    if text.startswith("CHECKPOINT:"):
        kind = text.split(":", 1)[1]
        path = tmp_path / "w.pt"
        if kind == "text":
            path.write_text("not a tensor file")
        else:
            torch.save({"w": torch.zeros(1)}, path)
        text = _block("model", f"name: mlp; state: 'checkpoint:{path}'")
    suite = tmp_path / "s.yaml"
    suite.write_text(text)
    return str(suite)


def _resolve_argv(tmp_path, extra: list[str]) -> list[str]:
    out = {"FILE": tmp_path / "a-file", "CORRUPT": tmp_path / "corrupt", "FOREIGN": tmp_path / "foreign"}
    out["FILE"].write_text("x")
    out["CORRUPT"].mkdir()
    (out["CORRUPT"] / "results.sqlite").write_bytes(b"this is not sqlite" * 100)
    out["FOREIGN"].mkdir()
    with sqlite3.connect(out["FOREIGN"] / "results.sqlite") as db:
        db.execute("CREATE TABLE cells (x TEXT)")
    return [str(out.get(a, a)) for a in extra]


def _one_line_error(capsys, code: int, fragment: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("giabench: error: ") and fragment in lines[0], err
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_run_input_exits_2_with_one_line(case, tmp_path, capsys, monkeypatch):
    _, text, extra, fragment, names_line = case
    monkeypatch.chdir(tmp_path)
    path = _prepare(tmp_path, text)
    argv = ["run", path, "--quiet", *_resolve_argv(tmp_path, extra)]
    if "--out" not in extra:
        argv += ["--out", str(tmp_path / "run")]
    line = _one_line_error(capsys, cli.main(argv), fragment)
    if names_line:
        assert SUITE_LINE.search(line), line
    assert not (tmp_path / "run" / "results.sqlite").is_file() or not _stored(tmp_path / "run")


def _stored(run) -> int:
    with sqlite3.connect(run / "results.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM cells").fetchone()[0]


def test_a_defaults_error_names_the_line_of_the_parameter(tmp_path, capsys):
    path = _prepare(tmp_path, _block("model", "name: mlp; state: untrained; width: -4"))
    line = _one_line_error(capsys, cli.main(["run", path, "--out", str(tmp_path / "r")]), "width must be >= 1")
    assert "s.yaml:8: " in line  # the width line under defaults: model:


OTHER_COMMANDS = [
    ("binary-suite", ["run", "BINARY"], "not a UTF-8 text file"),
    ("directory-suite", ["run", "DIR"], "is a directory, not a YAML file"),
    ("missing-suite-file", ["run", "missing.yaml"], "no such file"),
    ("unknown-packaged-suite", ["run", "nope"], "unknown suite 'nope'"),
    ("binary-utility-config", ["utility", "BINARY"], "not a UTF-8 text file"),
    ("utility-config-unknown-field", ["utility", "UTILITY:color: red"], "unknown field 'color'"),
    ("utility-config-rounds-zero", ["utility", "UTILITY:rounds: 0"], "rounds must be a whole number >= 1"),
    ("utility-config-duplicate", ["utility", "UTILITY:rounds: 1\nrounds: 2"], "duplicate key 'rounds'"),
    ("leaderboard-missing-folder", ["leaderboard", "NOWHERE"], "no such run folder"),
    ("leaderboard-corrupt-folder", ["leaderboard", "CORRUPT"], "not a giabench results database"),
    ("leaderboard-utility-not-a-number", ["leaderboard", "GOODRUN", "--utility", "UTILCSV:notanumber"],
     "column 'accuracy': expected a number, got 'notanumber'"),
    ("leaderboard-utility-missing-columns", ["leaderboard", "GOODRUN", "--utility", "UTILCSV:"], "missing column"),
    ("regress-missing-baseline", ["regress", "--baseline", "nowhere.csv"], "no such file"),
    ("regress-garbage-baseline", ["regress", "--baseline", "BINARY"], "not a CSV file"),
    ("train-generator-out-not-pt", ["train-generator", "--dataset", "mnist-5k", "--out", "g.txt"], "must end in .pt"),
    ("train-generator-epochs-zero", ["train-generator", "--dataset", "mnist-5k", "--out", "g.pt", "--epochs", "0"],
     "--epochs must be >= 1"),
]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    suite = out / "g.yaml"
    suite.write_text("defaults: {dataset: mnist-sample, model: {name: mlp, width: 8}, attack: {name: ig, "
                     "iterations: 1}}\n")
    assert cli.main(["run", str(suite), "--out", str(out / "run"), "--quiet"]) == 0
    return out / "run"


@pytest.mark.parametrize("case", OTHER_COMMANDS, ids=[c[0] for c in OTHER_COMMANDS])
def test_malformed_input_to_other_commands_exits_2_with_one_line(case, tmp_path, capsys, monkeypatch, good_run):
    _, argv, fragment = case
    monkeypatch.chdir(tmp_path)
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "results.sqlite").write_bytes(b"garbage" * 100)
    resolved = []
    for arg in argv:
        if arg.startswith("UTILITY:"):
            (tmp_path / "u.yaml").write_text(arg.split(":", 1)[1] + "\n")
            arg = str(tmp_path / "u.yaml")
        elif arg.startswith("UTILCSV:"):
            value = arg.split(":", 1)[1]
            header = ("defense,defense_params,dataset,model,protocol,clients,rounds,batch,accuracy,bytes_per_round,"
                      "wall_per_round_s,epsilon,delta,adjacency,seed,threads,hardware")
            row = f"none,{{}},mnist-sample,mlp,fedsgd,2,2,4,{value},10,0.1,inf,0,,0,1,cpu"
            (tmp_path / "u.csv").write_text(f"{header}\n{row}\n" if value else "defense\nnone\n")
            arg = str(tmp_path / "u.csv")
        resolved.append({"BINARY": str(tmp_path / "binary.bin"), "DIR": str(tmp_path / "dir.yaml"),
                         "NOWHERE": str(tmp_path / "nowhere"), "CORRUPT": str(tmp_path / "corrupt"),
                         "GOODRUN": str(good_run)}.get(arg, arg))
    _one_line_error(capsys, cli.main(resolved), fragment)


def test_show_skips_a_corrupt_run_folder_and_finds_the_cell_in_the_others(good_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "broken").mkdir()
    (runs / "broken" / "results.sqlite").write_bytes(b"garbage" * 100)
    (runs / "good").symlink_to(good_run)
    cell = sqlite3.connect(good_run / "results.sqlite").execute("SELECT cell FROM cells").fetchone()[0]
    assert cli.main(["show", cell[:6], "--runs", str(runs)]) == 0
    captured = capsys.readouterr()
    assert f"cell {cell}" in captured.out and "warning: skipping" in captured.err


def test_a_suite_name_becomes_a_safe_folder_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text('name: "../../Evil Name"\ndefaults: {dataset: mnist-sample, model: '
                                     '{name: mlp, width: 8}, attack: {name: ig, iterations: 1}}\n')
    assert cli.main(["run", "s.yaml", "--quiet"]) == 0
    assert (tmp_path / "runs" / "evil-name" / "results.sqlite").is_file()
    assert not (tmp_path.parent / "Evil Name").exists()
