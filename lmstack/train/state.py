"""Training checkpoints: a model folder plus `trainer_state/`, written atomically, last K kept.

The trainer state holds everything needed to continue exactly: optimizer moments, step, RNG
states (dropout), and the recipe's own counters. Data position is the step itself, because the
samplers derive each batch from (seed, step).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from lmstack.errors import LmstackError
from lmstack.model.checkpoint import save
from lmstack.train import dist

STEP_DIR = re.compile(r"^step_(\d{7})$")
# Options that may change between a run and its resumption: they change nothing the run computes.
RESUME_FREE = {"resume", "quiet", "bars", "tensorboard", "log_interval", "keep_last", "out", "device"}


def config_fingerprint(cfg) -> dict:
    """The options a run was started with (as JSON round-trips them), less those free to change on --resume."""
    return {k: v for k, v in json.loads(json.dumps(asdict(cfg), default=str)).items() if k not in RESUME_FREE}


def check_resumable(where, recipe: str | None, config: dict | None, stage: str, cfg) -> None:
    """A checkpoint (or round state) at `where` written by `recipe` with options `config` may be resumed by a
    `stage` run with options `cfg`; else a one-line error naming what differs."""
    if recipe != stage:
        raise LmstackError(f"{where}: a checkpoint of {recipe or 'another recipe'}, not of {stage}; resume in the "
                           f"folder a {stage} run wrote, or give a new --out")
    saved, now = config or {}, config_fingerprint(cfg)
    diff = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diff:
        shown = ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:3])
        raise LmstackError(f"{where}: written with other options ({shown}{', ...' if len(diff) > 3 else ''}); "
                           "resume with the options of the run, or give a new --out")


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def write_trainer_state(folder: Path, optimizer, step: int, extra: dict, blobs: dict | None = None) -> None:
    """`extra`: JSON-able counters; `blobs`: tensors and other state of the recipe's own (a value model, a
    random generator's state), saved beside the optimizer's."""
    d = folder / "trainer_state"
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"optimizer": optimizer.state_dict() if optimizer is not None else None, "rng": rng_state(),
                **(blobs or {})}, d / "state.pt")
    (d / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2, default=str))


def save_checkpoint(lm, run_dir: Path, step: int, optimizer, extra: dict, keep_last: int = 2, meta=None,
                    dist_info=None, sharded: bool = False, blobs: dict | None = None) -> Path:
    """Write run_dir/checkpoints/step_NNNNNNN atomically (model folder + trainer_state), prune old ones.

    Every rank calls this. Unsharded (single process, DDP): rank 0 writes everything. Sharded (FSDP):
    all ranks gather the full weights for rank 0 to write, then each rank adds its optimizer shard.
    """
    rank = dist_info.rank if dist_info is not None else 0
    path = Path(run_dir) / "checkpoints" / f"step_{step:07d}"
    full = None
    if sharded:
        full = get_model_state_dict(lm.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        for stale in path.parent.glob(".step_*.tmp-*"):  # a checkpoint a kill interrupted before its rename
            shutil.rmtree(stale, ignore_errors=True)
        save(lm, path, state_dict=full, **(meta or {}),
             writer=lambda tmp: write_trainer_state(tmp, None if sharded else optimizer, step, extra, blobs))
    if dist_info is not None:
        dist.barrier(dist_info)
    if sharded:
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state()},
                   path / "trainer_state" / f"optimizer_rank{rank}.pt")
        dist.barrier(dist_info)
    if rank == 0 and keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    ckdir = Path(run_dir) / "checkpoints"
    if not ckdir.is_dir():
        return []
    return sorted(p for p in ckdir.iterdir() if STEP_DIR.match(p.name) and (p / "trainer_state").is_dir())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_trainer_state(folder: Path, rank: int = 0) -> tuple[dict, dict]:
    """(optimizer and RNG state for this rank, state.json contents)."""
    d = Path(folder) / "trainer_state"
    try:
        shard = d / f"optimizer_rank{rank}.pt"
        blob = torch.load(shard if shard.exists() else d / "state.pt", map_location="cpu", weights_only=False)
        info = json.loads((d / "state.json").read_text())
    except FileNotFoundError:
        raise LmstackError(f"{d}: no trainer state (state.pt, state.json); cannot resume from it") from None
    except Exception as e:
        raise LmstackError(f"{d}: unreadable trainer state ({e})") from None
    return blob, info
