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

# On a CPU, two processes of one thread each (PyTorch DDP, `--processes 2`) train this small model
# faster than one process with two threads (measured in docs/results.md), so the demo uses them where there
# is no GPU and there are at least 2 cores. Each process takes 64 images: the global batch stays 128.
CORES=$(nproc 2>/dev/null || echo 1)
no_gpu() { $PY -c "import sys, torch; sys.exit(1 if torch.cuda.is_available() else 0)"; }
if [ "$CORES" -ge 2 ] && no_gpu; then
  TRAIN=($PY -m mixerlab train --processes 2)
  BATCH=(--batch-size 64)
else
  TRAIN=($PY -m mixerlab train)
  BATCH=()
fi

# Ctrl-C: the trainer saves where it stands and says how to continue: by running `make demo` again.
export MIXERLAB_RESUME_COMMAND="make demo"
status=0
if [ -f "$OUT/last.pt" ] && [ ! -f "$OUT/summary.json" ]; then
  "${TRAIN[@]}" --resume "$OUT" || status=$?    # an interrupted demo continues where it stopped
elif [ ! -f "$OUT/summary.json" ]; then
  "${TRAIN[@]}" --recipe demo "${BATCH[@]}" --out "$OUT" || status=$?
fi
[ "$status" = 0 ] || exit "$status"
$PY -m mixerlab eval "$OUT" --data fashion-mnist --out "$OUT" --overwrite
$PY -m mixerlab eval "$OUT" --data fashion-mnist --out "$OUT" --tta --overwrite
$PY - "$OUT" <<'PY'
# A few test images as PNG files, then the prediction command a user would run on their own files.
import sys
from pathlib import Path
from PIL import Image
from mixerlab.data.sources import load_dataset
out = Path(sys.argv[1]) / "samples"
out.mkdir(exist_ok=True)
val = load_dataset("fashion-mnist").test
for i in range(4):
    Image.fromarray(val.images[i, 0].numpy()).save(out / f"test_{i}.png")
PY
$PY -m mixerlab predict "$OUT" "$OUT/samples" --topk 2
echo
echo "Report: $OUT/report.md (plots: loss.png accuracy.png lr.png confusion.png); summary: $OUT/summary.json"
