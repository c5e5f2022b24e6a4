import subprocess
import sys
import textwrap

import pytest
import torch

CLI = [sys.executable, "-m", "giabench"]


def _run(*args, cwd=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def _suite(tmp_path, body):
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(body))
    return str(path)


def _assert_one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


def test_unknown_attack_exits_2(tmp_path):
    result = _run("run", _suite(tmp_path, "grid: {attack: [nope]}"), "--out", str(tmp_path / "r"))
    _assert_one_line_error(result, "unknown attack 'nope'; known:")


def test_malformed_yaml_exits_2(tmp_path):
    result = _run("run", _suite(tmp_path, "grid: {attack: [ig}\n"), "--out", str(tmp_path / "r"))
    _assert_one_line_error(result, "malformed YAML")


def test_batch_larger_than_dataset_exits_2(tmp_path):
    path = _suite(tmp_path, "defaults: {batch_size: 64, attack: {name: ig, iterations: 1}}")
    _assert_one_line_error(_run("run", path, "--out", str(tmp_path / "r"), "--quiet"),
                           "batch_size 64 is larger than dataset cifar10-sample (20 images)")


def test_checkpoint_that_is_not_a_tensor_file_exits_2(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_text("definitely not a checkpoint")
    path = _suite(tmp_path, f"defaults: {{model: {{name: lenet, state: 'checkpoint:{bad}'}}, "
                            "attack: {name: ig, iterations: 1}}")
    _assert_one_line_error(_run("run", path, "--out", str(tmp_path / "r"), "--quiet"), "not a torch tensor file")


def test_cuda_without_a_gpu_exits_2(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _assert_one_line_error(_run("run", "smoke", "--device", "cuda", "--out", str(tmp_path / "r")), "no CUDA device")


def test_list_shows_names_and_parameters():
    result = _run("list", "attacks")
    assert result.returncode == 0
    assert "ig" in result.stdout and "threat model" in result.stdout and "iterations=1000" in result.stdout
    assert "dp-sgd" in _run("list", "defenses").stdout
    assert "cifar10-sample" in _run("list", "datasets").stdout


@pytest.mark.parametrize("kind", ["models", "protocols", "datasets"])
def test_list_every_kind_of_component(kind):
    # a model class inherits nn.Module.parameters, a method, where attacks declare their parameter table
    result = _run("list", kind)
    assert result.returncode == 0 and result.stderr == "" and "parameters:" in result.stdout


def test_describe_and_list_verbose_show_each_parameter_with_its_default_range_and_doc():
    described = _run("describe", "dp-sgd")
    assert described.returncode == 0
    rows = {line.split()[0]: line for line in described.stdout.splitlines() if line[:1].isalpha()}
    assert "1.0" in rows["clip"] and "> 0" in rows["clip"] and "per-sample gradient" in rows["clip"]
    assert "one of add-remove, replace-one" in rows["adjacency"]
    verbose = _run("list", "attacks", "--verbose").stdout
    assert "iterations  1000" in verbose and "signed-Adam steps per restart" in verbose and ">= 1" in verbose
    _assert_one_line_error(_run("describe", "deepleak"), "no component called 'deepleak'")


def test_run_writes_the_leaderboard_and_show_finds_the_cell(tmp_path):
    path = _suite(tmp_path, """
        name: tiny
        defaults: {dataset: mnist-sample, model: {name: mlp, width: 16}, attack: {name: ig, iterations: 5}}
        grid: {defense: [none, {name: dp-sgd, noise_multiplier: 1.0}]}
    """)
    result = _run("run", path, "--out", str(tmp_path / "r"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "dp-sgd" in result.stdout and (tmp_path / "r" / "leaderboard.html").is_file()
    header = (tmp_path / "r" / "leaderboard.csv").read_text().splitlines()[0]
    assert header.startswith("attack,defense,dataset,model,protocol,batch_size,seed,psnr,ssim,lpips,label_acc,"
                             "iterations,wall_s,epsilon,bytes,cell")
    cell = (tmp_path / "r" / "leaderboard.csv").read_text().splitlines()[1].split(",")[15]
    shown = _run("show", cell[:8], "--runs", str(tmp_path))
    assert shown.returncode == 0 and '"name": "mlp"' in shown.stdout


def test_threads_below_one_exits_2(tmp_path):
    _assert_one_line_error(_run("run", "smoke", "--threads", "0", "--out", str(tmp_path / "r")), "--threads")


def test_a_bad_model_init_is_named(tmp_path):
    path = _suite(tmp_path, "defaults: {model: {name: convnet, width: 4, init: glorot}, attack: {name: ig, "
                            "iterations: 1}}")
    _assert_one_line_error(_run("run", path, "--out", str(tmp_path / "r"), "--quiet"), "init must be one of")


def test_every_option_has_help_and_the_version_is_printed(capsys):
    import argparse

    from giabench import __version__
    from giabench.app import cli

    parser = cli._parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"giabench {name} {action.dest} has no help"
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"giabench {__version__}"
    assert _run("--version").stdout.strip() == f"giabench {__version__}"  # python -m giabench
