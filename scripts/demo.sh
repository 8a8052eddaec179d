#!/usr/bin/env bash
# The main job on the built-in default: load a reference checkpoint and print a summary.
set -euo pipefail
PY=.venv/bin/python
$PY -m mixerlab info
ref=../shared/testdata/official_mixer/tiny_p4/params.npz
if [ -f "$ref" ]; then $PY -m mixerlab info "$ref"; fi
