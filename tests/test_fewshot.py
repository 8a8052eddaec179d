"""The paper's few-shot linear evaluation against big_vision's own evaluator (../shared reference
cases, made with its fewshot_lsr.py), and DINO's weighted kNN against a brute-force reference."""

import numpy as np
import pytest

from mixerlab.features.fewshot import FewshotError, fewshot, subsets

CASES = ["case_a_d64_c10", "case_b_d768_c5", "case_c_imbalanced_d32_c6"]


@pytest.mark.parametrize("case", CASES)
def test_fewshot_reproduces_big_vision(fewshot_dir, case):
    ref = np.load(fewshot_dir / f"{case}.npz")
    shots, seeds = [int(k) for k in ref["shots"]], len(ref["seeds"])
    res = fewshot(ref["train_features"], ref["train_labels"], ref["test_features"], ref["test_labels"], shots=shots,
                  seeds=seeds, l2_reg=float(ref["l2_reg"]), num_classes=int(ref["num_classes"]), details=True)
    n_test = len(ref["test_labels"])
    for i, k in enumerate(shots):
        entry = res["shots"][str(k)]
        for s in range(seeds):
            run = entry["runs"][s]
            n = int(ref["num_selected"][i, s])
            np.testing.assert_array_equal(run["rows"], ref["train_indices"][i, s, :n])  # the same subsets
            scores = ref["test_scores"][i, s]
            np.testing.assert_allclose(run["scores"], scores, atol=1e-3)
            top2 = np.sort(scores, 1)[:, -2:]
            tie = (top2[:, 1] - top2[:, 0]) < 1e-4  # the README's near-ties may flip in float32
            assert (run["pred"] == ref["pred_labels"][i, s])[~tie].all()
            assert run["correct"] == int(ref["num_correct"][i, s]) or tie.any()
        np.testing.assert_allclose(entry["accuracy"], ref["accuracy"][i], atol=1.5 / n_test)
        assert entry["mean"] == pytest.approx(float(np.mean(entry["accuracy"])))
    if case.startswith("case_c"):  # class 2 has 3 images, class 4 has 12: all of them, as big_vision
        assert res["shots"]["25"]["train_images"] == [115, 115, 115]


def test_subsets_are_nested_and_class_major():
    labels = np.array([0, 1, 0, 1, 0, 1, 2])
    s = subsets(labels, 4, (1, 2, 3), seed=0)  # class 3 has none, class 2 one
    assert set(s[1]) <= set(s[2]) <= set(s[3])
    assert list(labels[s[3]]) == [0, 0, 0, 1, 1, 1, 2]


@pytest.mark.parametrize("change,says", [
    (dict(shots=(0, 5)), "shots must be at least 1"),
    (dict(seeds=0), "seeds must be at least 1"),
    (dict(train_features=np.full((4, 3), np.nan)), "training features: 4 row(s) hold NaN"),
    (dict(test_features=np.zeros((2, 5))), "training features have 3 dimensions, test features 5"),
    (dict(train_labels=np.array([0, 1, 2])), "training labels: expected 4 labels"),
    (dict(train_features=np.zeros((0, 3)), train_labels=np.zeros(0, int)), "expected a non-empty N x D array"),
    (dict(l2_reg=0), "l2_reg must be above 0"),
])
def test_fewshot_bad_input_is_one_message(change, says):
    args = dict(train_features=np.random.default_rng(0).normal(size=(4, 3)), train_labels=np.array([0, 1, 0, 1]),
                test_features=np.zeros((2, 3)), test_labels=np.array([0, 1]))
    args.update(change)
    with pytest.raises(FewshotError, match=says.replace("(", r"\(").replace(")", r"\)")):
        fewshot(**args)


def test_a_class_without_training_images_is_never_predicted(caplog):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4))
    y = np.array([0, 1] * 10)
    res = fewshot(x, y, x, y, shots=(5,), seeds=1, num_classes=3, details=True)
    assert 2 not in res["shots"]["5"]["runs"][0]["pred"] and "class(es) [2] have no training images" in caplog.text


# ----------------------------------------------------------------------------------------------- kNN
def test_knn_matches_a_brute_force_reference():
    from mixerlab.features.knn import knn, knn_reference

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(7, 16)) * 0.6
    ytr, yte = rng.integers(0, 7, 300), rng.integers(0, 7, 90)
    xtr = centres[ytr] + rng.normal(size=(300, 16))
    xte = centres[yte] + rng.normal(size=(90, 16))
    res = knn(xtr, ytr, xte, yte, ks=(1, 10, 20), num_classes=7, chunk=32)  # chunks of the test set
    for k in (1, 10, 20):
        top1, top5 = knn_reference(xtr, ytr, xte, yte, k, num_classes=7)
        assert res["k"][str(k)]["top1"] == pytest.approx(top1) and res["k"][str(k)]["top5"] == pytest.approx(top5)
    assert 0.3 < res["k"]["20"]["top1"] < 1  # separable enough to beat chance (1/7), not trivially


def test_knn_answer_known_by_construction():
    """Each test image is a scaled copy of one training image (cosine 1) of its class; the rest of the
    training set points elsewhere: with k=1 every answer is right, whatever the scale."""
    from mixerlab.features.knn import knn

    eye = np.eye(6)
    xtr, ytr = np.concatenate([eye, -eye]), np.array([0, 1, 2, 0, 1, 2, 2, 2, 2, 1, 1, 1])
    xte, yte = eye[[0, 3, 4]] * [[5.0], [0.1], [2.0]], ytr[[0, 3, 4]]
    res = knn(xtr, ytr, xte, yte, ks=(1,))
    assert res["k"]["1"] == {"top1": 1.0, "top5": 1.0}


# ------------------------------------------------------------------------------------- the command
def test_fewshot_cli_on_a_folder_and_a_headless_model(tmp_path, capsys):
    import json

    import torch

    import mixerlab
    from mixerlab.cli import main as cli
    from mixerlab.data.sources import load_dataset
    from mixerlab.features.extract import extract_features

    from .test_train import make_image_folder

    root = make_image_folder(tmp_path / "shapes", n=8)
    torch.manual_seed(0)
    model = mixerlab.create_model("mixer_nano", img_size=16, in_chans=3, num_classes=0, patch_size=4)
    model.save_pretrained(tmp_path / "m")
    assert cli(["fewshot", str(tmp_path / "m"), "--data", str(root), "--shots", "1", "2", "20", "--seeds", "2",
                "--knn", "--k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    # the same numbers as the Python API on the same features
    data = load_dataset(str(root), val_split=0)
    m = mixerlab.from_pretrained(tmp_path / "m")
    xtr, ytr = extract_features(m, data.train)
    xte, yte = extract_features(m, data.val)
    want = fewshot(xtr, ytr, xte, yte, shots=(1, 2, 20), seeds=2, num_classes=3)
    assert res["shots"]["2"]["accuracy"] == pytest.approx(want["shots"]["2"]["accuracy"])
    assert res["shots"]["20"]["train_images"] == [24, 24]  # 8 a class: all of them, as big_vision
    assert set(res["knn"]["k"]) == {"3"} and res["test_split"] == "val"
    assert cli(["fewshot", str(tmp_path / "m"), "--data", str(root), "--shots", "0"]) == 2
    assert "shots must be at least 1" in capsys.readouterr().err
    assert cli(["fewshot", str(tmp_path / "m"), "--data", str(root), "--shots", "1", "--seeds", "1", "--probe"]) == 0
    out = capsys.readouterr().out
    assert "mean +- std" in out and "linear probe (L-BFGS" in out


# ------------------------------------------------------------------------------------- linear probe
def test_linear_probe_chooses_its_penalty_on_training_features_and_beats_chance():
    from mixerlab.features.probe import linear_probe

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 10))
    ytr, yte = rng.integers(0, 4, 400), rng.integers(0, 4, 200)
    xtr, xte = centres[ytr] + rng.normal(size=(400, 10)), centres[yte] + rng.normal(size=(200, 10))
    res = linear_probe(xtr, ytr, xte, yte, l2_grid=(1e-4, 1e-2, 10.0))
    assert set(res["val_top1"]) == {"0.0001", "0.01", "10.0"} and res["l2"] in (1e-4, 1e-2, 10.0)
    assert res["val_top1"][str(res["l2"])] == max(res["val_top1"].values())
    # the Bayes rule of these Gaussians, for scale: the probe gets close to it
    d = ((xte[:, None, :] - centres[None]) ** 2).sum(-1)
    bayes = float((d.argmin(1) == yte).mean())
    assert res["top1"] > bayes - 0.05 and res["top1"] > 0.5


# -------------------------------------------------------------------------------------------- embed
def test_embed_writes_safetensors_and_an_index_and_resumes_to_the_same_bytes(tmp_path, capsys):
    import json

    import torch
    from safetensors.numpy import load_file

    import mixerlab
    from mixerlab.cli import main as cli
    from mixerlab.data.sources import load_dataset
    from mixerlab.features.embed import embed
    from mixerlab.features.extract import extract_features

    from .test_train import make_image_folder

    root = make_image_folder(tmp_path / "shapes", n=10)
    torch.manual_seed(0)
    mixerlab.create_model("mixer_nano", img_size=16, in_chans=3, num_classes=3, patch_size=4).save_pretrained(
        tmp_path / "m")
    assert cli(["embed", str(tmp_path / "m"), "--data", str(root), "--out", str(tmp_path / "e"), "--batch-size",
                "7", "--workers", "0"]) == 0
    assert "wrote 45 rows of 128 features (train, val)" in capsys.readouterr().out
    t = load_file(str(tmp_path / "e" / "features.safetensors"))
    rows = [json.loads(x) for x in (tmp_path / "e" / "index.jsonl").read_text().splitlines()]
    assert t["features"].shape == (45, 128) and t["features"].dtype == np.float32 and len(rows) == 45
    assert [r["split"] for r in rows] == ["train"] * 30 + ["val"] * 15 and (t["split"] == [0] * 30 + [1] * 15).all()
    assert all(__import__("pathlib").Path(r["path"]).is_file() for r in rows)
    assert list(t["labels"]) == [r["label"] for r in rows]
    model = mixerlab.from_pretrained(tmp_path / "m")
    data = load_dataset(str(root), val_split=0, stream=True, workers=0)
    xtr, ytr = extract_features(model, data.train)
    np.testing.assert_allclose(t["features"][:30], xtr, rtol=0, atol=1e-5)
    assert not (tmp_path / "e" / "embed_state.json").exists() and not (tmp_path / "e" / "features.part").exists()
    # killed after two batches, then run again: the same bytes as the uninterrupted run
    assert embed(model, data, tmp_path / "k", batch_size=7, progress=False, stop_after_batches=2)["stopped"]
    assert (tmp_path / "k" / "embed_state.json").is_file() and not (tmp_path / "k" / "features.safetensors").exists()
    with pytest.raises(mixerlab.MixerlabError, match="unfinished embedding of other settings"):
        embed(model, data, tmp_path / "k", batch_size=5, progress=False)
    embed(model, data, tmp_path / "k", batch_size=7, progress=False)
    for f in ("features.safetensors", "index.jsonl"):
        assert (tmp_path / "k" / f).read_bytes() == (tmp_path / "e" / f).read_bytes(), f
    with pytest.raises(mixerlab.MixerlabError, match="holds a finished embedding"):
        embed(model, data, tmp_path / "k", batch_size=7, progress=False)
