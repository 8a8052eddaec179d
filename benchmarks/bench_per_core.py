"""The paper's throughput table in kind: images per second per core, Mixer against ViT of the same
size (S/16, B/16, L/16) at 224 px and at the fine-tuning resolution the paper uses for each family
(Mixer 448 px, ViT 384 px), fp32 and bf16, in one run.

    .venv/bin/python benchmarks/bench_per_core.py [--sizes s b l] [--batch 8] [--out runs/bench-per-core]

Each figure is the median of timed loops after warm-up, inference mode, batch `--batch` (smaller for
the large inputs so that a call holds about the same pixels); bf16 runs with weights cast once.
Prints a table with the Mixer / ViT ratio beside the paper's (Mixer-L/16 105 against ViT-L/16 32
img/s/core on TPU-v3: 3.3x) and writes results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mixerlab.models.registry import create_model
from mixerlab.perf.allocator import tune_cpu_allocator
from mixerlab.perf.timing import machine_info, time_call

FINETUNE_PX = {"mixer": 448, "vit": 384}
PAPER = {"l": (105, 32)}  # img/s/core on TPU-v3, Mixer-L/16 and ViT-L/16, paper Table 2


def per_core(name: str, px: int, dtype: torch.dtype, batch: int) -> float:
    model = create_model(name, img_size=px).to(dtype).eval()
    n = max(1, batch * 224 * 224 // (px * px))
    x = torch.randn(n, 3, px, px, dtype=dtype)
    with torch.inference_mode():
        s = time_call(lambda: model(x), torch.device("cpu"), warmup=1, iters=1, repeats=3)
    return n / s / torch.get_num_threads()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["s", "b", "l"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default="runs/bench-per-core")
    args = ap.parse_args()
    tune_cpu_allocator()
    rows = []
    for size in args.sizes:
        for res_kind in ("224", "finetune"):
            for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                row = {"size": size.upper(), "resolution": res_kind, "precision": prec}
                for family in ("mixer", "vit"):
                    px = 224 if res_kind == "224" else FINETUNE_PX[family]
                    row[family] = per_core(f"{family}_{size}16_224", px, dtype, args.batch)
                    row[f"{family}_px"] = px
                row["ratio"] = row["mixer"] / row["vit"]
                rows.append(row)
                paper = PAPER.get(size)
                note = f"  (paper, TPU-v3: {paper[0] / paper[1]:.1f}x)" if paper and res_kind == "finetune" else ""
                print(f"{size.upper()}/16 {prec} Mixer {row['mixer_px']} px {row['mixer']:7.2f} img/s/core, ViT "
                      f"{row['vit_px']} px {row['vit']:7.2f}: Mixer / ViT {row['ratio']:.2f}x{note}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
