"""Several processes, one run: ``torchrun --nproc_per_node N -m gmptl cv ...``.

Under torchrun (``WORLD_SIZE`` > 1) every rank builds the same model and the same
epoch plan; each rank runs its share of every optimizer step's micro-batches, the
gradients are summed across ranks before the step (so the update is the one a
single process makes with the same effective batch), evaluation batches are split
across ranks and their scores summed, and only rank 0 writes files. nccl on CUDA,
gloo on the CPU. Without torchrun every function here is a no-op.
"""

import os

import torch
import torch.distributed as dist


def init() -> None:
    """Join the process group torchrun describes (once); nothing when run alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over ranks, on the device it came on (nccl reduces on this rank's GPU)."""
    if not active():
        return tensor
    work = tensor.cuda() if dist.get_backend() == "nccl" and not tensor.is_cuda else tensor
    dist.all_reduce(work)
    return work.to(tensor.device)


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Add every rank's gradients, one flat buffer (a rank without micro-batches adds zeros)."""
    if not active():
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    for p, summed in zip(params, flat.split([p.numel() for p in params])):
        p.grad = summed.view_as(p).clone()
