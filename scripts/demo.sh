#!/usr/bin/env bash
# The main job on the built-in default: train a Mixer on Fashion-MNIST, evaluate it, leave a report.
set -euo pipefail
PY=.venv/bin/python
OUT=${OUT:-runs/demo}

# Fashion-MNIST ships in Debian's dataset-fashion-mnist; install it where apt is usable, else mixerlab
# downloads the official files and checks their checksums.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) \
    >/dev/null 2>&1 || echo "apt could not install dataset-fashion-mnist; mixerlab will download the files"
fi

if [ -f "$OUT/last.pt" ] && [ ! -f "$OUT/summary.json" ]; then
  $PY -m mixerlab train --resume "$OUT"          # an interrupted demo continues where it stopped
elif [ ! -f "$OUT/summary.json" ]; then
  $PY -m mixerlab train --recipe demo --out "$OUT"
fi
$PY -m mixerlab eval "$OUT" --data fashion-mnist --out "$OUT"
$PY - "$OUT" <<'PY'
# A few test images as PNG files, then the prediction command a user would run on their own files.
import sys
from pathlib import Path
from PIL import Image
from mixerlab.data import load_dataset
out = Path(sys.argv[1]) / "samples"
out.mkdir(exist_ok=True)
val = load_dataset("fashion-mnist").val
for i in range(4):
    Image.fromarray(val.images[i, 0].numpy()).save(out / f"test_{i}.png")
PY
$PY -m mixerlab predict "$OUT" "$OUT/samples" --topk 2
echo
echo "Report: $OUT/report.md (plots: loss.png accuracy.png lr.png confusion.png); summary: $OUT/summary.json"
