"""The first seconds of a session: create_model for every registered size (random init, as a user gets
it) beside timm's create_model of the same shape, and `mixerlab info NAME` as a command.

    .venv/bin/python benchmarks/bench_startup.py

Prints seconds per call (median of 3) and each ratio to timm in the same run, with the machine; the
figures are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import torch

import mixerlab
from mixerlab.perf.threads import configure
from mixerlab.perf.timing import machine_info

PAIRS = [("mixer_s16_224", "mixer_s16_224"), ("mixer_b16_224", "mixer_b16_224"), ("mixer_l16_224", "mixer_l16_224"),
         ("mixer_h14_224", None), ("vit_b16_224", "vit_base_patch16_224")]


def seconds(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    configure()
    try:
        import timm
    except ImportError:
        timm = None
    res = {"machine": machine_info(), "create_model_s": {}, "timm_create_model_s": {}, "info_command_s": {}}
    for ours, theirs in PAIRS:
        res["create_model_s"][ours] = seconds(lambda n=ours: mixerlab.create_model(n))
        line = f"{ours:<16} mixerlab.create_model {res['create_model_s'][ours]:6.2f} s"
        if timm is not None and theirs:
            res["timm_create_model_s"][ours] = seconds(lambda n=theirs: timm.create_model(n, pretrained=False))
            line += (f"   timm.create_model {res['timm_create_model_s'][ours]:6.2f} s   "
                     f"ratio {res['create_model_s'][ours] / res['timm_create_model_s'][ours]:.2f}")
        print(line, flush=True)
    for name in ("mixer_l16_224", "mixer_h14_224"):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mixerlab", "info", name], check=True, capture_output=True)
        res["info_command_s"][name] = time.perf_counter() - t
        print(f"mixerlab info {name}: {res['info_command_s'][name]:.2f} s (a new process, imports included)")
    print(json.dumps({"torch_threads": torch.get_num_threads(), "load_average": res["machine"]["load_average"]}))


if __name__ == "__main__":
    main()
