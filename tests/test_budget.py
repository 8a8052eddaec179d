"""--time-budget and --max-steps: a run fitted to the seconds it may take, then trained for exactly
the steps found, resumably; and what a user's own length does to a recipe's budget."""

import json

import pytest
import torch

from mixerlab.cli import main as cli
from mixerlab.errors import ConfigError
from mixerlab.training import budget
from mixerlab.training.config import TrainConfig
from mixerlab.training.loop import train
from mixerlab.training.recipes import resolve

from .test_train import make_image_folder, tiny_cfg

STEPS_PER_EPOCH = 36 // 8  # make_image_folder: 3 classes x 12 training images, batch 8


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_measuring_the_step_leaves_the_run_as_it_was(tmp_path):
    """A budget that holds more than --epochs allows trains those epochs, and exactly as the same run
    given its length trains: the steps measured before it changed no weight and no optimiser state."""
    root = make_image_folder(tmp_path / "shapes")
    fitted = train(tiny_cfg(tmp_path, root, epochs=3, time_budget=1e6, optimizer="muon", ema=0.9))
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (cfg["max_steps"], cfg["epochs"], cfg["time_budget"]) == (3 * STEPS_PER_EPOCH, 3, 1e6)
    given = tiny_cfg(tmp_path, root, epochs=3, optimizer="muon", ema=0.9, out=str(tmp_path / "given"))
    assert given.time_budget is None
    train(given)
    a, b = weights(tmp_path / "run" / "last.pt"), weights(tmp_path / "given" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert fitted["train_time_s"] > 0


@pytest.fixture
def half_second_steps(monkeypatch):
    """A step that takes 0.5 s, found in 1 s of measuring (the arithmetic, not this machine's speed)."""
    monkeypatch.setattr(budget, "measure_step", lambda run: (0.5, 0.0, 1.0, 8))


def test_the_budget_sets_the_steps_and_the_last_epoch_is_cut_short(tmp_path, half_second_steps, caplog):
    root = make_image_folder(tmp_path / "shapes")
    caplog.set_level("INFO", logger="mixerlab.training.loop")
    # 4 s, 1 spent measuring: 3 s hold 6 steps of 0.5 s = an epoch of 4 and 2 of the next
    train(tiny_cfg(tmp_path, root, epochs=None, time_budget=4.0, schedule="linear", min_lr=0.0))
    run = tmp_path / "run"
    cfg = json.loads((run / "config.json").read_text())["train"]
    assert (cfg["max_steps"], cfg["epochs"]) == (6, 2)
    assert [m["step"] for m in lines(run / "metrics.jsonl")] == [4, 6]
    report = (run / "report.md").read_text()
    assert "| epoch | steps to its end |" in report and "\n| 1 | 4 |" in report and "\n| 2 | 6 |" in report
    steps = lines(run / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 7))
    # the schedule ends with the last step, not with a second epoch that never came
    assert torch.load(run / "last.pt", weights_only=True)["scheduler"]["_last_lr"][0] == 0.0
    said = caplog.text
    assert "time budget 4 s: a step takes 500 ms here" in said and "6 steps fit: 1.50 epochs" in said
    assert "2 epochs of 4 steps (6 steps, the last epoch cut short" in said


def test_a_budgeted_run_resumes_bit_for_bit_without_measuring_again(tmp_path, half_second_steps, monkeypatch):
    root = make_image_folder(tmp_path / "shapes")
    kw = dict(epochs=None, time_budget=4.0, optimizer="muon")
    train(tiny_cfg(tmp_path, root, out=str(tmp_path / "straight"), **kw))
    stopped = train(tiny_cfg(tmp_path, root, **kw), stop_after_steps=5)
    assert stopped["stopped"]
    monkeypatch.setattr(budget, "measure_step", lambda run: pytest.fail("a resumed run measured the step again"))
    train(resume=str(tmp_path / "run"))
    a, b = weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "run" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["step"] for m in lines(tmp_path / "run" / "metrics.jsonl")] == [4, 6]


def test_training_a_budgeted_run_further_with_epochs_runs_whole_epochs(tmp_path, half_second_steps):
    root = make_image_folder(tmp_path / "shapes")
    train(tiny_cfg(tmp_path, root, epochs=None, time_budget=2.5))  # 1.5 s: 3 steps, 1 epoch cut short
    train(resume=str(tmp_path / "run"), resume_overrides={"epochs": 2})
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (cfg["epochs"], cfg["max_steps"], cfg["time_budget"]) == (2, None, None)
    assert [m["epoch"] for m in lines(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_an_epochs_own_cost_is_paid_once_an_epoch():
    """A stream's workers start every epoch: with 10 steps of 0.1 s and 0.5 s an epoch, 4 s hold two
    whole epochs (3 s) and 5 steps of a third (0.5 s to start it, then 0.5 s of steps)."""
    assert budget.steps_that_fit(4.0, 0.1, 0.5, 10) == 25
    assert budget.steps_that_fit(4.0, 0.1, 0.0, 10) == 40  # images in memory: every second is steps
    assert budget.steps_that_fit(0.3, 0.1, 0.5, 10) == 0  # not even the first epoch's start (fit asks for 1)
    assert budget.steps_that_fit(100.0, 0.1, 0.0, 10) == 1000


def test_max_steps_alone_cuts_the_run_short(tmp_path):
    root = make_image_folder(tmp_path / "shapes")
    train(tiny_cfg(tmp_path, root, epochs=3, max_steps=5))
    assert [m["step"] for m in lines(tmp_path / "run" / "metrics.jsonl")] == [4, 5]


def test_a_length_the_user_gives_replaces_the_recipes_budget():
    assert resolve("speedrun").time_budget == 60.0 and resolve("speedrun").epochs is None
    assert resolve("speedrun", epochs=3).time_budget is None
    assert resolve("speedrun", max_steps=500).time_budget is None
    both = resolve("speedrun", epochs=3, time_budget=30.0)  # then --epochs is the most it trains
    assert (both.epochs, both.time_budget) == (3, 30.0)
    with pytest.raises(ConfigError, match="--time-budget and --max-steps both set the run's length"):
        resolve("scratch", time_budget=30.0, max_steps=100)


@pytest.mark.parametrize("flag, value", [("--time-budget", "0"), ("--time-budget", "-5"), ("--max-steps", "0")])
def test_bad_lengths_are_refused_by_name(tmp_path, capsys, flag, value):
    assert cli(["train", "--data", str(tmp_path), flag, value, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert flag.lstrip("-").replace("-", "_") in err and value in err and not (tmp_path / "run").exists()


def test_flips_from_the_data_are_off_for_under_two_epochs():
    """Fashion-MNIST keeps its classes in a mirror, but a run of under two epochs learns more from the
    images as they are (docs/results.md); a flag still wins."""
    from types import SimpleNamespace

    from mixerlab.training.auto import fill_from_data

    data = SimpleNamespace(mirror_invariant=True)
    assert fill_from_data(TrainConfig(epochs=1), data, 100).flip is False
    assert fill_from_data(TrainConfig(epochs=2), data, 100).flip is True
    assert fill_from_data(TrainConfig(epochs=2, max_steps=150), data, 100).flip is False  # 1.5 epochs
    assert fill_from_data(TrainConfig(epochs=1, flip=True), data, 100).flip is True


def test_the_warmup_from_the_data_is_a_share_of_the_steps_taken():
    """The auto recipe warms up over 5% of the run: of the steps a budget found, not of whole epochs."""
    from types import SimpleNamespace

    from mixerlab.training.auto import WARMUP_SHARE, fill_from_data

    data = SimpleNamespace(mirror_invariant=False)
    cut = fill_from_data(TrainConfig(epochs=2, max_steps=150), data, 100)
    assert cut.warmup_epochs == pytest.approx(WARMUP_SHARE * 1.5)
    assert fill_from_data(TrainConfig(epochs=2), data, 100).warmup_epochs == pytest.approx(WARMUP_SHARE * 2)


def test_a_model_arg_changes_one_argument_of_the_recipes_model(tmp_path):
    """`--recipe speedrun --model-arg channels_mlp_dim=384` is the speedrun's 7x7-patch, 4-layer Mixer
    with a wider channel MLP, not mixer_pico's defaults (4x4 patches, 6 layers) with it; a model of the
    user's own takes none of the recipe's arguments."""
    wider = resolve("speedrun", model_args={"channels_mlp_dim": 384})
    assert wider.model_args == {"patch_size": 7, "depth": 4, "channels_mlp_dim": 384, "act": "gelu"}
    assert resolve("speedrun", model="mixer_nano", model_args={"depth": 2}).model_args == {"depth": 2}
    f = tmp_path / "my.yaml"
    f.write_text("recipe: speedrun\nmodel_args:\n  depth: 6\n")
    both = resolve(None, str(f), model_args={"patch_size": 4})
    assert both.model_args == {"patch_size": 4, "depth": 6, "channels_mlp_dim": 256, "act": "gelu"}
    f.write_text("model_args: 3\n")
    with pytest.raises(ConfigError, match="my.yaml: model_args must be a mapping"):
        resolve(None, str(f))
