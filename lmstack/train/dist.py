"""Distributed training under torchrun: PyTorch's own DDP and FSDP2, nothing home-made."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this init started the process group (a recipe run inside another leaves it open)

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device: str = "auto") -> DistInfo:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); single process otherwise."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo(device=torch.device(device))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev, owns)


def wrap(model: torch.nn.Module, info: DistInfo, fsdp: bool = False) -> torch.nn.Module:
    """DDP for models that fit one device; FSDP2 (fully_shard per block, then the root) for those that don't."""
    if info.world == 1 and not fsdp:
        return model
    if fsdp:
        return shard(model)
    return DDP(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)


# Entry points other than forward that callers use (a Transformer's hidden states, a reward or value model's
# per-token head): FSDP2 must gather the weights around them too.
FORWARD_METHODS = ("hidden_states", "per_token")


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: every network inside `model` (a Transformer, a reward/value model around one: PPO holds a policy and a
    value model) sharded bottom-up, block by block, then itself; then `model` if it holds weights of its own. Each
    network is a root of its own (FSDP2 roots are the modules called first: PPO calls its policy and value model
    apart, for rollouts, before calling them together)."""
    nets = [m for m in model.modules() if hasattr(m, "blocks") or hasattr(m, "backbone")]
    for m in nets:
        for block in getattr(m, "blocks", []):
            fully_shard(block)
    for m in reversed(nets):  # children before the networks that hold them
        fully_shard(m)
        for name in FORWARD_METHODS:
            if hasattr(m, name):
                register_fsdp_forward_method(m, name)
    if not isinstance(model, FSDPModule) and any(not isinstance(p, DTensor) for p in model.parameters()):
        fully_shard(model)
    return model


def all_mean(x: float, info: DistInfo) -> float:
    if info.world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.item() / info.world


def all_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum of `t` over the processes (a float64 copy; `t` itself is left as it is)."""
    t = t.detach().to(torch.float64)
    if info.world > 1:
        t = t.to(info.device if info.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
    return t.cpu()


def share(n: int, info: DistInfo) -> slice:
    """This process's contiguous share of n rows (n a multiple of the world size, which callers check)."""
    k = n // info.world
    return slice(info.rank * k, (info.rank + 1) * k)


def gather_rows(rows: list, info: DistInfo) -> list:
    """Every process's list of (picklable) rows, concatenated in rank order, on every process."""
    if info.world == 1:
        return list(rows)
    parts = [None] * info.world
    dist.all_gather_object(parts, rows)
    return [r for part in parts for r in part]


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """End the process group, if this process's init started it (a recipe run inside another, as rejection
    sampling runs SFT, leaves it to the outer one)."""
    if info.world > 1 and info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
