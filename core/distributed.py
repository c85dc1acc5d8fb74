"""Several processes (``torchrun --nproc_per_node K``, one or many machines): sharded evaluation gathered on rank 0.

Training under torchrun is DDP (:mod:`unmask.core.training.trainer`: one process per device, gloo on CPU, NCCL on CUDA;
every rank draws its own batches, rank 0 writes the checkpoints and the final model). Evaluation under torchrun splits
the dataset into one contiguous shard per rank; each rank decodes its shard and rank 0 gathers the predictions and NFE,
scores the whole dataset with the task and prints / writes the report; the other ranks print nothing.

Shards are cut at multiples of the batch size when there are at least as many batches as ranks, so every rank runs
exactly the batches a single process would: with a deterministic strategy (argmax values, no noise) the gathered
predictions equal the single-process ones (a test checks this with 2 CPU processes). Rank r seeds its generator
with ``seed + r * 1_000_003``, so stochastic strategies draw independent noise per shard.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from unmask.core.task import Dataset, Task

SEED_STRIDE = 1_000_003


def rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank_world()[0] == 0


def setup(device: str | None = None) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); True when distributed.

    ``device`` ``cuda...`` selects the NCCL backend and this rank's GPU (LOCAL_RANK); anything else uses gloo.
    """
    rank, world = rank_world()
    if world <= 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    cuda = bool(device) and str(device).startswith("cuda")
    if cuda:
        from unmask.core.decoding.runtime import require_cuda

        require_cuda(f"--device {device}")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def active() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def cleanup() -> None:
    """Leave the process group (after a final barrier)."""
    if active():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def shard_bounds(n: int, rank: int, world: int, batch_size: int = 1) -> tuple[int, int]:
    """[start, stop) of rank ``rank``'s contiguous shard of ``n`` examples.

    Cut at multiples of ``batch_size`` when there are at least ``world`` batches (every rank then runs the very
    batches one process would), else at single examples; shard sizes differ by at most one unit.
    """
    unit = batch_size if batch_size > 0 and -(-n // batch_size) >= world else 1
    units = -(-n // unit)
    lo = units * rank // world
    hi = units * (rank + 1) // world
    return min(n, lo * unit), min(n, hi * unit)


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (a list of one in a single process)."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sharded_evaluate(engine: Any, task: Task, data: Dataset, strategy: Any, *, batch_size: int = 256, seed: int = 0,
                     device: Any = "cpu", trace: bool = False, progress: bool = False,
                     scheduler: str = "static", retries: int = 0, retry_noise: float = 0.1) -> Any:
    """Evaluate ``strategy`` on ``data``; under torchrun each rank decodes its shard and rank 0 returns the gathered
    :class:`~unmask.core.evaluate.EvalResult` (other ranks return None). ``retries``, ``retry_noise``: see
    :func:`unmask.core.evaluate.evaluate`. ``strategy`` is a decoding strategy or an
    evaluator with an ``evaluate(engine, data, ...)`` method (an objective's own decoder, e.g. the ARM baseline's).
    """
    from unmask.core.evaluate import EvalResult, evaluate_with

    def run(part: Dataset, part_seed: int, show: bool) -> EvalResult:
        return evaluate_with(engine, task, part, strategy, batch_size=batch_size, seed=part_seed, device=device,
                             trace=trace, progress=show, scheduler=scheduler, retries=retries,
                             retry_noise=retry_noise)

    if not active():
        return run(data, seed, progress)
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    lo, hi = shard_bounds(len(data), rank, world, batch_size)
    part = data.take(slice(lo, hi))
    if len(part):
        local = run(part, seed + rank * SEED_STRIDE, progress and rank == 0)
        payload = {"pred": local.predictions, "nfe": np.asarray(local.per_example["nfe"]), "order": local.order,
                   "seconds": local.seconds, "strategy": local.strategy, "options": local.options}
    else:
        payload = None
    parts = all_gather(payload)
    if rank != 0:
        return None
    return gather_results(parts, task, data)


def gather_results(parts: list[dict[str, Any] | None], task: Task, data: Dataset) -> Any:
    """One :class:`~unmask.core.evaluate.EvalResult` for ``data`` from the per-rank payloads (rank order)."""
    from unmask.core.evaluate import EvalResult

    got = [p for p in parts if p is not None]
    assert got, "no rank evaluated anything"
    pred = np.concatenate([p["pred"] for p in got])
    nfe = np.concatenate([p["nfe"] for p in got])
    assert len(pred) == len(data), (len(pred), len(data))
    orders = [p["order"] for p in got]
    order = np.concatenate(orders) if all(o is not None for o in orders) else None
    seconds = max(float(p["seconds"]) for p in got)  # wall time: the ranks ran side by side
    return EvalResult.from_predictions(task, data, got[0]["strategy"], pred, nfe, seconds, order, got[0]["options"])
