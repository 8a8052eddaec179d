"""`mixerlab viz`: the structure behind the figures, checked on weights built to have it."""

import json

import numpy as np
import pytest
import torch

import mixerlab
from mixerlab.cli import main as cli
from mixerlab.viz.units import frequency_scores, order_and_partners, token_mixing_units, unit_grids


def model_with_units(units: np.ndarray, grid=(4, 6), patch=4):
    """A Mixer whose first token-mixing layer holds `units` (D_S, gh, gw) exactly."""
    gh, gw = grid
    m = mixerlab.MlpMixer(mixerlab.MixerConfig(img_size=(gh * patch, gw * patch), patch_size=patch, in_chans=3,
                                               num_classes=2, embed_dim=8, tokens_mlp_dim=len(units),
                                               channels_mlp_dim=16, depth=2))
    with torch.no_grad():
        m.blocks[0].mlp_tokens.fc1.weight.copy_(torch.from_numpy(units.reshape(len(units), -1)))
    return m


def test_a_single_token_unit_lights_its_own_cell():
    gh, gw = 4, 6
    units = np.zeros((gh * gw, gh, gw), np.float32)
    for t in range(gh * gw):
        units[t].flat[t] = 1.0
    grids = unit_grids(model_with_units(units).blocks[0].mlp_tokens.fc1.weight, (gh, gw))
    for t in range(gh * gw):  # token t = r * gw + c sits at (r, c): row-major, as the official code
        r, c = divmod(t, gw)
        assert grids[t][r, c] == 1.0 and np.count_nonzero(grids[t]) == 1


def test_low_frequency_first_and_each_unit_beside_its_inverse():
    gh, gw = 8, 8
    y, x = np.mgrid[0:gh, 0:gw]
    wave_low = np.cos(2 * np.pi * x / gw).astype(np.float32)  # one cycle across
    wave_mid = np.cos(2 * np.pi * 2 * y / gh).astype(np.float32)  # two cycles down
    wave_high = np.cos(2 * np.pi * 3 * (x + y) / gw).astype(np.float32)  # fine diagonal stripes
    units = np.stack([wave_high, wave_mid, wave_low, -wave_low, -wave_high, -wave_mid * 0.5])
    scores = frequency_scores(units)
    assert scores[2] < scores[1] < scores[0] and scores[2] == pytest.approx(scores[3])
    order, partner = order_and_partners(units, scores)
    assert order in ([2, 3, 1, 5, 0, 4], [3, 2, 1, 5, 0, 4])  # low first, each beside its exact inverse
    assert (partner[1], partner[0]) == (5, 4)
    info = token_mixing_units(model_with_units(units, grid=(gh, gw)), 0)
    assert info["order"] == order and info["partner"][0] == 4


def test_the_figure_of_an_official_npz_puts_token_r_c_at_cell_r_c(tmp_path, official_dir):
    arrays = dict(np.load(official_dir / "tiny_p4" / "params.npz"))
    s, ds = arrays["MixerBlock_0/token_mixing/Dense_0/kernel"].shape  # [S, D_S]: the official layout
    g = int(round(s**0.5))
    kernel = np.zeros((s, ds), np.float32)
    for d in range(ds):
        kernel[d % s, d] = 1.0 + d  # unit d reads token d (mod S) only
    arrays["MixerBlock_0/token_mixing/Dense_0/kernel"] = kernel
    np.savez(tmp_path / "m.npz", **arrays)
    assert cli(["viz", str(tmp_path / "m.npz"), "--out", str(tmp_path / "viz"), "--blocks", "0"]) == 0
    model = mixerlab.from_pretrained(tmp_path / "m.npz")
    grids = unit_grids(model.blocks[0].mlp_tokens.fc1.weight, model.config.grid_size)
    for d in range(ds):
        r, c = divmod(d % s, g)
        assert grids[d][r, c] == 1.0 + d and np.count_nonzero(grids[d]) == 1
    meta = json.loads((tmp_path / "viz" / "token_mixing_block0.json").read_text())
    assert sorted(meta["order"]) == list(range(ds)) and meta["grid"] == [g, g]
    for f in ("token_mixing_block0.png", "token_mixing_block0_first64.png", "stem.png", "stem.json"):
        assert (tmp_path / "viz" / f).stat().st_size > 0


def test_viz_of_a_b16_layout_a_timm_checkpoint_and_a_tiles_resized_model(tmp_path, official_dir):
    layout = json.loads((official_dir / "checkpoint_layout_B16.json").read_text())
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "b16.npz", **{k: rng.standard_normal(shape, dtype=np.float32) * 0.02
                                       for k, shape in layout["param_keys"]})
    assert cli(["viz", str(tmp_path / "b16.npz"), "--out", str(tmp_path / "b16"), "--blocks", "0"]) == 0
    meta = json.loads((tmp_path / "b16" / "token_mixing_block0.json").read_text())
    assert len(meta["order"]) == 384 and meta["grid"] == [14, 14]
    small = mixerlab.create_model("mixer_pico", num_classes=3)
    mixerlab.save_timm(small, tmp_path / "t.pth")
    assert cli(["viz", str(tmp_path / "t.pth"), "--out", str(tmp_path / "timm")]) == 0
    # tiles: each unit of the 2x2-resized model reads one tile of the new grid, a copy of an old unit
    big = mixerlab.resize_token_mixing(small, 56, method="tiles")
    grids = unit_grids(big.blocks[0].mlp_tokens.fc1.weight, big.config.grid_size)
    old = unit_grids(small.blocks[0].mlp_tokens.fc1.weight, small.config.grid_size)
    ds = old.shape[0]
    for k, (tr, tc) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        tile = grids[k * ds:(k + 1) * ds, tr * 7:(tr + 1) * 7, tc * 7:(tc + 1) * 7]
        np.testing.assert_array_equal(tile, old)
        outside = grids[k * ds:(k + 1) * ds].copy()
        outside[:, tr * 7:(tr + 1) * 7, tc * 7:(tc + 1) * 7] = 0
        assert not outside.any()


def test_viz_refuses_a_vit_and_bad_blocks(tmp_path, capsys):
    mixerlab.create_model("vit_nano").save_pretrained(tmp_path / "vit")
    assert cli(["viz", str(tmp_path / "vit"), "--out", str(tmp_path / "v")]) == 2
    assert "draws MLP-Mixer token mixing" in capsys.readouterr().err
    mixerlab.create_model("mixer_pico").save_pretrained(tmp_path / "m")
    assert cli(["viz", str(tmp_path / "m"), "--out", str(tmp_path / "v"), "--blocks", "9"]) == 2
    assert "--blocks [9]: the model has blocks 0..5" in capsys.readouterr().err


def test_the_run_report_and_the_eval_report(tmp_path, browser):
    from html.parser import HTMLParser

    from mixerlab.training.loop import train

    from .test_train import make_image_folder, tiny_cfg

    root = make_image_folder(tmp_path / "shapes")
    train(tiny_cfg(tmp_path, root, epochs=2))
    run = tmp_path / "run"
    md = (run / "report.md").read_text()
    assert "| class | images | accuracy (recall) | precision |" in md and "| circle | 6 |" in md
    for f in ("token_mixing_block0_first64.png", "confusion.png"):
        assert f"]({f})" in md and (run / f).is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert ("](hardest.png)" in md) == (summary["final_val_top1"] < 1)
    assert ("No image was misclassified" in md) == (summary["final_val_top1"] == 1)
    assert "](samples.png)" in md and "](loss.png)" in md and "learning rate of each optimiser step" in md
    # a later `mixerlab eval --tta` of the run folder shows in the run's report
    assert "Scored by mixerlab eval" not in md
    assert cli(["eval", str(run), "--data", str(root), "--tta"]) == 0
    md = (run / "report.md").read_text()
    tta = json.loads((run / "eval_tta.json").read_text())
    assert f"| eval_tta.json | {root} | val | yes | 18 | {100 * tta['top1']:.2f}% |" in md

    class Images(HTMLParser):
        def __init__(self):
            super().__init__()
            self.srcs = []

        def handle_starttag(self, tag, attrs):
            if tag in ("img", "script", "link"):
                self.srcs.append(dict(attrs).get("src") or dict(attrs).get("href") or "")

    parser = Images()
    html = (run / "report.html").read_text()
    parser.feed(html)
    assert len(parser.srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in parser.srcs)  # offline
    assert cli(["eval", str(run), "--data", str(root), "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert set(ev["precision_per_class"]) == {"circle", "square", "stripe"}
    assert all(set(h) == {"index", "true", "predicted", "confidence"} for h in ev["hardest"])
    assert "Most confident mistakes" in (tmp_path / "ev" / "eval_report.md").read_text()
    assert (tmp_path / "ev" / "eval_report.html").stat().st_size > 1000
    page = browser.new_page()
    page.goto((run / "report.html").as_uri())
    widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths and all(w > 0 for w in widths)  # every embedded image decodes


def test_a_run_that_errs_shows_its_mistakes_in_the_report(tmp_path):
    """A model known to err: its validation images of two classes are swapped, so it misclassifies
    them with confidence. The report must say so and show them."""
    from mixerlab.training.loop import train

    from .test_train import make_image_folder, tiny_cfg

    root = make_image_folder(tmp_path / "shapes")
    val = root / "val"
    (val / "circle").rename(val / "tmp")
    (val / "square").rename(val / "circle")
    (val / "tmp").rename(val / "square")
    train(tiny_cfg(tmp_path, root, epochs=2))
    run = tmp_path / "run"
    md = (run / "report.md").read_text()
    ev = json.loads((run / "summary.json").read_text())
    assert ev["val_top1"] < 0.9
    assert "No image was misclassified" not in md
    assert "images were misclassified" in md and "](hardest.png)" in md and (run / "hardest.png").is_file()
