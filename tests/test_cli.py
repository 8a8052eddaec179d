"""The command line as a user meets it: listing, describing, and clear errors (exit code 2)."""

import json
import subprocess
import sys

from mixerlab.cli import main as cli


def test_info_lists_every_model(capsys):
    assert cli(["info"]) == 0
    out = capsys.readouterr().out
    assert "mixer_b16_224" in out and "59,880,472" in out and "12.60" in out and "vit_b16_224" in out


def test_info_one_model_as_json(capsys):
    assert cli(["info", "mixer_l16_224", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 208_196_168 and info["num_patches"] == 196 and info["config"]["depth"] == 24


def test_errors_are_one_line_not_a_traceback(capsys, tmp_path):
    assert cli(["info", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert "mixerlab info: error:" in err and "missing.npz" in err and "Traceback" not in err
    assert cli(["train", "--data", "no-such-dataset", "--out", str(tmp_path / "r")]) == 2
    assert "unknown dataset 'no-such-dataset'" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_cli():
    r = subprocess.run([sys.executable, "-m", "mixerlab", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("info", "convert", "train", "eval", "predict", "bench"):
        assert cmd in r.stdout


def test_train_help_gives_each_recipes_defaults_and_print_config_the_resolved_options(capsys, tmp_path,
                                                                                      monkeypatch):
    import pytest

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("--lr LR default by --recipe: auto 0.01, best 0.01, demo 0.01, finetune 0.03, scratch 0.002, "
            "speedrun 0.01") in text
    assert ("--optimizer {adamw,sgd,muon} default by --recipe: auto muon, best muon, demo muon, finetune sgd, "
            "scratch adamw, speedrun muon") in text
    assert "--momentum MOMENTUM default 0.9" in text  # one value where every recipe agrees
    (tmp_path / "c.yaml").write_text("lr: 0.5\nepochs: 3\n")
    assert cli(["train", "--recipe", "scratch", "--config", str(tmp_path / "c.yaml"), "--epochs", "4",
                "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    # recipe, then file, then flags
    assert (cfg["recipe"], cfg["optimizer"], cfg["lr"], cfg["epochs"]) == ("scratch", "adamw", 0.5, 4)
    assert cli(["train", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["recipe"], cfg["optimizer"], cfg["epochs"]) == ("auto", "muon", None)
    assert not (tmp_path / "runs").exists()  # nothing was trained or written
