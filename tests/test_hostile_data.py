"""Shards and their index as untrusted input: no silent hang, an index checked like any config, a
pack that writes where it was told and nothing half-done."""

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import mixerlab
from mixerlab.cli import main as cli
from mixerlab.data.sources import load_dataset

from .test_stream import make_jpeg_folder

pytest.importorskip("webdataset")
pytest.importorskip("torchdata")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_jpeg_folder(tmp_path_factory.mktemp("hd") / "imgs", bad=False)


@pytest.fixture(scope="module")
def packed(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("hd") / "shards"
    assert cli(["data", "pack", str(folder), str(out), "--shard-size", "8"]) == 0
    return out


@pytest.fixture
def shards(packed, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(packed, out)
    return out


def train_cli(data, out, *extra, env=None, timeout=180):
    args = [sys.executable, "-m", "mixerlab", "train", "--data", str(data), "--model", "mixer_nano", "--img-size", "16",
            "--batch-size", "4", "--epochs", "1", "--precision", "fp32", "--quiet", "--workers", "1",
            "--out", str(out), *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_training_stops_with_one_message_when_every_shard_is_truncated(shards, tmp_path):
    for tar in shards.glob("train-*.tar"):
        tar.write_bytes(tar.read_bytes()[:700])
    r = train_cli(shards, tmp_path / "run")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "no sample could be read: " in r.stderr and "shard(s) gave no sample" in r.stderr
    assert "train-000000.tar" in r.stderr and "Traceback" not in r.stderr


class Handler(http.server.SimpleHTTPRequestHandler):
    mode = "ok"

    def do_GET(self):  # noqa: N802
        if self.path.endswith(".tar") and Handler.mode == "404":
            self.send_error(404)
        elif self.path.endswith(".tar") and Handler.mode == "hang":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.flush()
            time.sleep(6)  # longer than the reader's timeout; the server thread then goes on
        else:
            super().do_GET()

    def log_message(self, *a):
        pass


@pytest.mark.parametrize("mode,text", [("404", "HTTP 404"), ("hang", "timed out")])
def test_shards_that_fail_or_hang_over_http_stop_the_run_with_their_reason(shards, tmp_path, mode, text):
    Handler.mode = mode
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: Handler(*a, directory=str(shards), **k))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pattern = json.loads((shards / "dataset.json").read_text())["splits"]["train"]["pattern"]
        url = f"http://127.0.0.1:{server.server_address[1]}/{pattern}"
        r = train_cli(url, tmp_path / "run", env={"MIXERLAB_HTTP_TIMEOUT_S": "1"})
    finally:
        server.shutdown()
    assert r.returncode == 2, r.stderr[-3000:]
    assert "no sample could be read" in r.stderr and text in r.stderr, r.stderr[-2000:]


def edit_index(shards: Path, **changes):
    index = json.loads((shards / "dataset.json").read_text())
    for k, v in changes.items():
        if v is None:
            index.pop(k)
        else:
            index[k] = v
    (shards / "dataset.json").write_text(json.dumps(index))


@pytest.mark.parametrize("changes,message", [
    ({"splits": None}, "key 'splits' is missing"),
    ({"classes": None}, "key 'classes' is missing"),
    ({"classes": "abc"}, "key 'classes' must be a non-empty list of class names"),
    ({"classes": ["a", "a", "b"]}, "key 'classes' lists a name twice"),
    ({"img_size": [100000, 100000]}, "key 'img_size' [100000, 100000] is 10,000,000,000 pixels, over the decoder's"),
    ({"img_size": [16]}, "key 'img_size' must be [height, width]"),
    ({"channels": 4}, "key 'channels' must be 1 (grey) or 3 (RGB), found 4"),
    ({"splits": {"val": {}}}, "key 'splits' must hold a 'train' split"),
    ({"splits": {"train": {"pattern": "../../etc/x-{0..1}.tar", "counts": {}}}}, "must name files beside the index"),
    ({"splits": {"train": {"pattern": "train-{000000..000005}.tar", "counts": {"train-000000.tar": -1}}}},
     "key 'splits.train.counts' must map each shard's file name to its sample count"),
])
def test_a_bad_dataset_json_is_refused_with_its_key(shards, changes, message):
    edit_index(shards, **changes)
    with pytest.raises(mixerlab.DataError) as e:
        load_dataset(str(shards))
    assert message in str(e.value) and "dataset.json" in str(e.value)


def test_counts_that_lie_are_refused(shards):
    index = json.loads((shards / "dataset.json").read_text())
    index["splits"]["train"]["counts"]["train-000001.tar"] = 5000
    (shards / "dataset.json").write_text(json.dumps(index))
    with pytest.raises(mixerlab.DataError, match=r"says train-000001.tar holds 5000 samples, the shard holds 8"):
        load_dataset(str(shards))


def test_labels_beyond_the_class_list_are_named_not_a_crash(shards, tmp_path):
    edit_index(shards, classes=["c0", "c1"])  # the shards hold labels 0..2
    r = train_cli(shards, tmp_path / "run", "--strict")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "label 2 is not one of the 2 classes of dataset.json" in r.stderr and "Traceback" not in r.stderr


def test_a_truncated_shard_among_good_ones_is_named_once(shards, tmp_path):
    tar = shards / "train-000002.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    r = train_cli(shards, tmp_path / "run", "--epochs", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if "train-000002.tar: ReadError" in ln]
    assert lines and "BufferedReader" not in r.stderr
    assert len(lines) <= 2  # once per epoch's reader at most, not once per round of the shards


def test_pack_writes_to_a_folder_whose_name_holds_a_percent(folder, tmp_path):
    out = tmp_path / "out%s"
    assert cli(["data", "pack", str(folder), str(out), "--shard-size", "8"]) == 0
    assert (out / "train-000000.tar").is_file() and (out / "dataset.json").is_file()
    assert load_dataset(str(out)).num_classes == 3


def test_a_failed_pack_leaves_nothing(folder, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    assert cli(["data", "pack", str(folder), str(tmp_path / "afile")]) == 2
    assert "afile: is a file; give a folder" in capsys.readouterr().err
    from mixerlab.data import shards

    real = shards._pack_split

    def fail_in_val(wds, tqdm, name, *a):
        if name == "val":
            raise OSError("disk on fire")
        return real(wds, tqdm, name, *a)

    monkeypatch.setattr(shards, "_pack_split", fail_in_val)
    with pytest.raises(OSError):
        shards.pack_folder(folder, tmp_path / "new", 8, progress=False)
    assert not (tmp_path / "new").exists()


def test_empty_and_macos_metadata_files_are_left_out_of_a_pack(tmp_path, caplog):
    src = make_jpeg_folder(tmp_path / "imgs", n=4, bad=False)
    (src / "train" / "c0" / "._0.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
    (src / "train" / "c1" / "empty.jpg").write_bytes(b"")
    index = mixerlab.data.shards.pack_folder(src, tmp_path / "out", 100, progress=False)
    assert sum(index["splits"]["train"]["counts"].values()) == 12
    assert "left out 2 file(s) that are macOS '._' metadata or empty" in caplog.text
