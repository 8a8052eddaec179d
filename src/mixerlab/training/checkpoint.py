"""A run's folder on disk: opening it for a new or a resumed run, and its checkpoints, written
atomically, read with `weights_only=True` and recognised by their format tag. What goes into a
checkpoint is `Run.state_dict()` (loop.py)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, TrainingError
from ..io_utils import atomic_write
from .config import RESUMABLE, TrainConfig
from .launch import LAUNCHED

CHECKPOINT_FORMAT = "mixerlab-train-v1"
RUNS = Path("runs")  # where runs without --out get a folder each


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no checkpoint to resume from") from None
    except Exception as e:
        raise TrainingError(f"{path}: cannot read checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a mixerlab training checkpoint")
    return ckpt


def open_run(cfg: TrainConfig | None, resume: str | None,
             resume_overrides: dict[str, Any] | None) -> tuple[TrainConfig, Path, dict[str, Any] | None]:
    """(config, run folder, checkpoint to resume from or None) for a new run or a resumed one."""
    if resume:
        run_dir = Path(resume)
        refused = sorted(set(resume_overrides or {}) - set(RESUMABLE))
        if refused:
            flags = ", ".join("--model-arg" if k == "model_args" else "--" + k.replace("_", "-") for k in refused)
            raise ConfigError(
                f"{flags} cannot change when resuming {run_dir}: a resumed run continues as it was configured. "
                f"Allowed with --resume: {', '.join('--' + k.replace('_', '-') for k in RESUMABLE)}. To train "
                f"from this checkpoint with other settings, start a new run: mixerlab train --pretrained "
                f"{run_dir} --out NEW_FOLDER {flags} ...")
        ckpt = load_checkpoint(run_dir / "last.pt")
        saved = dict(ckpt["train_config"])
        if "epochs" in (resume_overrides or {}) and "max_steps" not in resume_overrides:
            # --epochs N trains to the end of epoch N, past the steps a time budget found
            saved.update(max_steps=None, time_budget=None)
        cfg = TrainConfig.from_dict({**saved, **(resume_overrides or {}), "out": str(run_dir)})
        return cfg, run_dir, ckpt
    if cfg is None:
        raise ValueError("train() needs a TrainConfig or a run folder to resume")
    if cfg.out is None:
        cfg = dataclasses.replace(cfg, out=str(new_run_dir(cfg.model)))
    run_dir = Path(cfg.out)
    if (run_dir / "last.pt").exists():
        raise TrainingError(f"{run_dir} already holds a run: resume it with --resume {run_dir}, "
                            f"or choose another --out")
    check_writable_dir(run_dir)
    return cfg, run_dir, None


def new_run_dir(model: str, root: Path = RUNS) -> Path:
    """runs/<date>-<time>-<model>, numbered when two runs start in the same second, as timm and
    Lightning give each run a folder of its own. Several processes (torchrun) would each pick their own
    second, so they must be given one folder."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("with several processes, give the run's folder: --out FOLDER (every process writes "
                          "the same one)")
    base = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"
    path, n = base, 2
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return path


def link_latest(run_dir: Path, root: Path = RUNS) -> Path | None:
    """Point runs/latest at `run_dir` (atomically); returns what it pointed at before."""
    link = root / "latest"
    if link.exists() and not link.is_symlink():
        return None  # a real folder of that name (a run from before per-run folders): left alone
    before = Path(os.readlink(link)) if link.is_symlink() else None
    tmp = root / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(run_dir.resolve(), root.resolve()), tmp)
    os.replace(tmp, link)
    return before


def remove_unstarted(run_dir: Path, latest_before: Path | None) -> None:
    """A new run that failed before its first checkpoint (bad data, a bad option found late) leaves
    no folder behind, and runs/latest points where it pointed before."""
    if (run_dir / "last.pt").exists() or not run_dir.is_dir():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    link = run_dir.parent / "latest"
    if link.is_symlink() and Path(os.readlink(link)).name == run_dir.name:
        link.unlink()
        if latest_before is not None:
            os.symlink(latest_before, link)


def check_writable_dir(run_dir: Path) -> None:
    """Fail before any data is loaded when the run folder cannot be written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"--out {run_dir}: is a file, not a folder; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=run_dir).close()
    except OSError as e:
        raise TrainingError(f"--out {run_dir}: cannot write there ({e.strerror or e}); choose another --out") from None


def resume_command(run_dir: Path, world: int, launched: bool | None = None) -> str:
    """The command that continues a stopped run: the same launcher, with --resume; or the command that
    started it, when that says (`make demo` sets MIXERLAB_RESUME_COMMAND). `launched`: started by
    `mixerlab train --processes N` (default: as the launcher's workers are told in their environment)."""
    if os.environ.get("MIXERLAB_RESUME_COMMAND"):
        return os.environ["MIXERLAB_RESUME_COMMAND"]
    if launched is None:
        launched = bool(os.environ.get(LAUNCHED))
    if world == 1:
        how = "mixerlab train"
    elif launched:
        how = f"mixerlab train --processes {world}"
    else:
        how = f"torchrun --nproc_per_node {world} -m mixerlab train"
    return f"{how} --resume {run_dir}"
