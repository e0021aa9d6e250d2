"""Multi-process training on ``torch.distributed`` (one process per core/GPU/node slot).

Launch any training command with ``torchrun``, e.g.::

    torchrun --nproc_per_node=2 -m attnrec train data.parquet -m sasrec -o runs/sasrec

:func:`init_from_env` (called by the CLI) joins the process group that
``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ...); without those variables it does nothing and training
is single-process. :func:`attnrec.training.train` then wraps the module in
``DistributedDataParallel`` and shards every epoch's batches across ranks
(:func:`shard`); only rank 0 evaluates and writes files (:func:`is_main`).

Backends: ``gloo`` for CPU training, ``nccl`` when CUDA is available (the
training loop falls back to a gloo group for modules that live on the CPU, so
``auto`` is always safe).
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

_CPU_GROUP = None  # gloo group for CPU tensors when the default backend is nccl


def env_requests_distributed() -> bool:
    """Whether a launcher (torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(backend: str = "auto", timeout_s: float = 1800.0) -> bool:
    """Join the process group described by the environment; returns whether distributed.

    A no-op (False) for a plain single-process run or when already initialised.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if not env_requests_distributed():
        return False
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that evaluates, logs results and writes files."""
    return rank() == 0


def cpu_group():
    """A process group that can reduce CPU tensors (the default one unless it is nccl)."""
    global _CPU_GROUP
    if dist.get_backend() != "nccl":
        return None  # None = the default group
    if _CPU_GROUP is None:
        _CPU_GROUP = dist.new_group(backend="gloo")
    return _CPU_GROUP


def barrier() -> None:
    if is_distributed():
        dist.barrier(group=cpu_group())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (identity when single-process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=cpu_group())
    return box[0]


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64 on the CPU)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=cpu_group())
    return t.tolist()


def shard(batches: Iterable[Any], rank: int, world: int) -> Iterator[Any]:
    """Rank ``rank``'s batches: the ``rank``-th of every consecutive group of ``world``.

    Every rank runs the same seeded ``batches`` generator, so the groups are
    identical across ranks; an incomplete last group is dropped so that all
    ranks take the same number of steps (DDP needs every rank in every step).
    One optimiser step then covers ``world`` batches, like one step of a
    single process on their concatenation.
    """
    if world <= 1:
        yield from batches
        return
    group: list[Any] = []
    for b in batches:
        group.append(b)
        if len(group) == world:
            yield group[rank]
            group = []


def cleanup() -> None:
    """Leave the process group; the barrier keeps a fast rank from tearing down mid-collective."""
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()
