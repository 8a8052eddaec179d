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
