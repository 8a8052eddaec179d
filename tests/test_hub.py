"""A model leaves mixerlab as a timm Hub folder: timm (local-dir:), transformers (pipeline) and
mixerlab itself read it back, torch.hub builds every registered model from a clean clone, and the
card shows only what the run measured. No network: the Hub itself is never reached."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mixerlab
from mixerlab.cli import main as cli
from mixerlab.weights.hub import HubError, save_hub

timm = pytest.importorskip("timm")
ROOT = Path(__file__).resolve().parents[1]


def perturbed(model):
    """A model whose every weight is away from its (zero or constant) initialisation."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def small_mixer(**kw):
    # S/32's registered shape (P=32, 8 layers, C=512) with narrow MLPs and 64 px: cheap, timm builds it
    args = {**dict(img_size=64, num_classes=4, tokens_mlp_dim=128, channels_mlp_dim=512, act="gelu"), **kw}
    return perturbed(mixerlab.create_model("mixer_s32_224", **args))


def image_files(folder: Path, n: int = 3) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):  # other sizes than the model's: the resize and centre crop are part of the check
        f = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (70 + 13 * i, 90 - 7 * i, 3), dtype=np.uint8)).save(f)
        files.append(str(f))
    return files


def test_timm_local_dir_gives_the_same_logits_on_timms_own_preprocessing(tmp_path):
    model = small_mixer(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), crop_pct=0.9)
    save_hub(model, tmp_path / "hub")
    t = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
    data_cfg = timm.data.resolve_data_config({}, model=t)
    assert tuple(data_cfg["mean"]) == (0.4, 0.5, 0.6) and data_cfg["crop_pct"] == 0.9
    transform = timm.data.create_transform(**data_cfg)
    x = torch.stack([transform(Image.open(f).convert("RGB")) for f in image_files(tmp_path / "img")])
    with torch.no_grad():
        np.testing.assert_allclose(t(x).numpy(), model(x).numpy(), atol=1e-5, rtol=0)


def test_vit_goes_the_same_way(tmp_path):
    model = perturbed(mixerlab.create_model("vit_s16_224", img_size=32, depth=2, num_classes=3))
    save_hub(model, tmp_path / "hub")
    t = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(t(x).numpy(), model(x).numpy(), atol=1e-5, rtol=0)


def test_mixerlab_reads_the_folder_back_exactly(tmp_path):
    model = small_mixer(act="gelu_tanh", interpolation="bilinear")
    model.class_names = ["cat", "dog", "bird", "fish"]
    save_hub(model, tmp_path / "hub")
    back = mixerlab.from_pretrained(tmp_path / "hub")
    assert back.config == model.config and back.class_names == model.class_names
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_the_tanh_gelu_difference_is_measured_and_stated(tmp_path, capsys):
    """timm's MlpMixer takes its activation as a class, so a config cannot ask for the tanh GELU:
    the command and the card state the logit difference, and it is the difference timm really shows."""
    model = small_mixer(act="gelu_tanh")
    src = tmp_path / "src"
    model.save_pretrained(src)
    assert cli(["convert", str(src), str(tmp_path / "hub"), "--format", "hub"]) == 0
    out = capsys.readouterr().out
    note = save_hub(model, tmp_path / "again")["activation"]
    assert f"up to {note['max_abs_logit_diff']:.3g}" in out
    card = (tmp_path / "hub" / "README.md").read_text()
    assert f"largest logit difference is {note['max_abs_logit_diff']:.3g}" in card
    t = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
    x = torch.randn(64, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        timm_diff = float((t(x) - model(x)).abs().max())
    assert note["max_abs_logit_diff"] > 0
    assert timm_diff == pytest.approx(note["max_abs_logit_diff"], rel=1e-3, abs=1e-6)


def test_transformers_pipeline_agrees_with_mixerlab_predict(tmp_path):
    pytest.importorskip("transformers")
    from transformers import pipeline

    from mixerlab.predict import predict_files

    model = small_mixer()
    model.class_names = ["cat", "dog <b>x</b>", "two\nlines", "caf\u00e9"]
    save_hub(model, tmp_path / "hub")
    files = image_files(tmp_path / "img")
    classify = pipeline("image-classification", model=str(tmp_path / "hub"), top_k=4)
    ours = predict_files(mixerlab.from_pretrained(tmp_path / "hub"), files, 4, "cpu")
    for f, row in zip(files, ours):
        theirs = classify(f)
        assert [r["label"] for r in theirs] == [t["class"] for t in row["top"]]
        np.testing.assert_allclose([r["score"] for r in theirs], [t["prob"] for t in row["top"]], atol=1e-4)


def test_a_shape_timm_cannot_build_is_refused_with_the_alternative(tmp_path, capsys):
    demo = mixerlab.create_model("mixer_nano", patch_size=4, depth=6, channels_mlp_dim=256, act="gelu")
    with pytest.raises(HubError) as e:
        save_hub(demo, tmp_path / "hub")
    msg = str(e.value)
    assert "P=4 N=6 C=128" in msg and "--format timm" in msg and "MlpMixer(patch_size=4, num_blocks=6" in msg
    assert not (tmp_path / "hub").exists()  # refused before anything is written
    # the alternative it spells out works: timm's MlpMixer with those arguments takes the state dict
    from safetensors.torch import load_file
    from timm.models.mlp_mixer import MlpMixer

    mixerlab.save_timm(perturbed(demo), tmp_path / "demo.safetensors")
    t = MlpMixer(patch_size=4, num_blocks=6, embed_dim=128, mlp_ratio=(0.5, 2), img_size=28, in_chans=1,
                 num_classes=10)
    t.load_state_dict(load_file(tmp_path / "demo.safetensors"))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(t.eval()(x).numpy(), demo(x).numpy(), atol=1e-5, rtol=0)
    demo.save_pretrained(tmp_path / "demo")
    assert cli(["convert", str(tmp_path / "demo"), str(tmp_path / "hub"), "--format", "hub"]) == 2
    assert "timm cannot build this Mixer" in capsys.readouterr().err


def test_a_non_empty_out_dir_needs_overwrite(tmp_path, capsys):
    small_mixer().save_pretrained(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli(["convert", str(tmp_path / "src"), str(out), "--format", "hub"]) == 2
    assert f"{out}: folder is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert cli(["convert", str(tmp_path / "src"), str(out), "--format", "hub", "--overwrite"]) == 0
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}


def test_hostile_class_names_are_written_safely(tmp_path):
    model = small_mixer()
    names = ["<script>alert(1)</script>", "a\nb | c", "bad\udc80byte", "`code` *x* [l](http://e)"]
    model.class_names = names
    src = tmp_path / "src"
    model.save_pretrained(src)
    # a run around it, so that the card's per-class table prints the names
    (src / "summary.json").write_text(json.dumps({"dataset": "my\nphotos", "epochs": 1}))
    (src / "final_eval.json").write_text(json.dumps({"top1": 0.5, "top5": 1.0, "split": "test", "count": 8,
                                                     "per_class": [0.5, 0.5, 0.25, 0.75]}))
    save_hub(mixerlab.from_pretrained(src), tmp_path / "hub", source=src)
    cfg = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert cfg["label_names"] == names  # JSON carries every name exactly (escaped)
    card = (tmp_path / "hub" / "README.md").read_text(encoding="utf-8")
    assert "<script>" not in card and "\\<script\\>" in card
    assert "bad\ufffdbyte" in card
    table = [line for line in card.splitlines() if line.startswith("| a b")]
    assert table == ["| a b \\| c | 50.00% | - |"]  # one row: the newline and the pipe cannot split it
    front = card.split("---")[1]
    assert 'name: "my photos"' in front  # the data name on one YAML line


def test_the_card_shows_the_runs_measured_figures_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    code = cli(["train", "--model", "mixer_s32_224", "--img-size", "32", "--model-arg", "tokens_mlp_dim=64",
                "--model-arg", "channels_mlp_dim=256", "--model-arg", "act=gelu", "--epochs", "1",
                "--max-steps-per-epoch", "3", "--batch-size", "16", "--val-split", "0", "--out", str(run),
                "--quiet"])
    assert code == 0
    final = json.loads((run / "final_eval.json").read_text())
    save_hub(mixerlab.from_pretrained(run), tmp_path / "hub", source=run, repo_id="me/mixer-fmnist")
    card = (tmp_path / "hub" / "README.md").read_text()
    assert f"value: {100 * final['top1']:.2f}" in card and "zalando-datasets/fashion_mnist" in card
    assert f"| T-shirt/top | {100 * final['per_class'][0]:.2f}% |" in card
    assert 'timm.create_model("hf-hub:me/mixer-fmnist", pretrained=True)' in card
    # the same weights with no run behind them: no figures at all
    mixerlab.from_pretrained(run).save_pretrained(tmp_path / "bare")
    save_hub(mixerlab.from_pretrained(tmp_path / "bare"), tmp_path / "hub2", source=tmp_path / "bare")
    bare = (tmp_path / "hub2" / "README.md").read_text()
    assert "model-index" not in bare and "No measured accuracy" in bare and "%" not in bare.split("## Results")[1]


def test_push_dry_run_lists_the_files_and_without_a_token_says_so(tmp_path, capsys, monkeypatch):
    small_mixer().save_pretrained(tmp_path / "src")
    assert cli(["push", str(tmp_path / "src"), "me/model", "--dry-run", "--out", str(tmp_path / "repo")]) == 0
    out = capsys.readouterr().out
    assert "would upload 3 files" in out and "model.safetensors" in out and "README.md" in out
    assert (tmp_path / "repo" / "config.json").is_file()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert cli(["push", str(tmp_path / "repo"), "me/model"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert cli(["push", str(tmp_path / "repo"), "not a repo id"]) == 2
    assert "ORG/NAME" in capsys.readouterr().err


def test_torch_hub_builds_every_model_from_a_clean_clone(tmp_path):
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    weights = tmp_path / "w"
    small_mixer().save_pretrained(weights)
    code = f"""
import torch
m = torch.hub.load({str(clone)!r}, "mixer_s32_224", source="local", pretrained={str(weights)!r},
                   tokens_mlp_dim=128, channels_mlp_dim=512)
import mixerlab
ref = mixerlab.from_pretrained({str(weights)!r}).eval()
x = torch.randn(2, 3, 64, 64)
with torch.no_grad():
    print(float((m.eval()(x) - ref(x)).abs().max()), mixerlab.__file__.startswith({str(clone)!r}))
r = torch.hub.load({str(clone)!r}, "vit_b16_224", source="local", num_classes=5)
print(type(r).__name__, r.num_classes)
try:
    torch.hub.load({str(clone)!r}, "mixer_b16_224", source="local", pretrained=True)
except ValueError as e:
    print("refused:", "download nothing" in str(e))
"""
    # run outside the repo, so that the mixerlab imported is the clone's, through hubconf.py
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                         check=True).stdout.split("\n")
    diff, from_clone = out[0].split()
    assert float(diff) == 0.0 and from_clone == "True"
    assert out[1] == "VisionTransformer 5" and out[2] == "refused: True"


def test_a_folder_timm_itself_saved_reads_with_its_label_names(tmp_path):
    from timm.models._hub import save_for_hf

    t = perturbed(timm.create_model("mixer_s32_224", img_size=64, num_classes=3, mlp_ratio=(0.25, 1.0)))
    save_for_hf(t, str(tmp_path / "hub"), model_config={"label_names": ["a", "b", "c"]}, safe_serialization=True)
    ours = mixerlab.from_pretrained(tmp_path / "hub")
    assert ours.class_names == ["a", "b", "c"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(ours.eval()(x).numpy(), t(x).numpy(), atol=1e-5, rtol=0)
