"""A stage's directory: last, best and top-K weights, written atomically, so a killed run resumes; what a
stage hands on: its best epoch's weights, or the mean of its K best (``train.average``).

Layout of ``out_dir`` (one training stage)::

    last.safetensors, last.json   model + Adam state after the last finished epoch, the loop's state
    best.safetensors              the weights the stage hands on (best epoch, or the mean of the K best)
    top/epoch<E>.safetensors      the K best epochs' weights while training (``train.average`` K > 1)
    log.jsonl                     one record per finished epoch
    done.json                     the stage's summary: present once it is finished (then skipped)
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import dist
from .utils import atomic_json, atomic_write


def atomic_save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """safetensors written atomically (``utils.atomic_write``): under torchrun only rank 0 writes."""
    def write(tmp: Path, tensors: dict) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
    atomic_write(tensors, path, write)


class CheckpointStore:
    """The files of one stage's directory (see the module docstring). Under torchrun only rank 0 writes."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.best, self.last = self.dir / "best.safetensors", self.dir / "last.safetensors"

    def finished(self, model: torch.nn.Module) -> dict | None:
        """The summary of a finished stage, its handed-on weights loaded into ``model``; None if unfinished."""
        done = self.dir / "done.json"
        if not done.exists():
            return None
        self.load_best(model)
        return json.loads(done.read_text())

    def load_best(self, model: torch.nn.Module) -> None:
        model.load_state_dict(load_file(str(self.best)))

    def save_best(self, model: torch.nn.Module) -> None:
        atomic_save(model.state_dict(), self.best)

    def resume(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict | None:
        """The loop's state after the last finished epoch, model and optimizer restored; None for a new stage."""
        if not self.last.exists():
            return None
        tensors = load_file(str(self.last))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        adam: dict = {}
        for name, value in tensors.items():
            if name.startswith("optimizer."):
                _, i, key = name.split(".", 2)
                adam.setdefault(int(i), {})[key] = value
        opt.load_state_dict({**opt.state_dict(), "state": adam})
        return json.loads((self.dir / "last.json").read_text())

    def top_file(self, epoch: int) -> Path:
        """Where ``train.average`` keeps the weights of one of the best epochs."""
        return self.dir / "top" / f"epoch{epoch}.safetensors"

    def save_epoch(self, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, improved: bool,
                   keep: set[int]) -> None:
        """After an epoch: the best weights when they improved, this epoch's in ``top/`` when it is one of
        ``keep``, then the resumable state and the log; last, ``top/`` loses the epochs not kept."""
        if dist.is_main():
            weights = model.state_dict()
            if improved:
                atomic_save(weights, self.best)
            if state["epoch"] in keep:
                (self.dir / "top").mkdir(exist_ok=True)
                atomic_save(weights, self.top_file(state["epoch"]))
            # Adam's state as flat named tensors: safetensors holds no pickles
            adam = {f"optimizer.{i}.{k}": torch.as_tensor(v) for i, s in opt.state_dict()["state"].items()
                    for k, v in s.items()}
            atomic_save({**{f"model.{k}": v for k, v in weights.items()}, **adam}, self.last)
            atomic_json(state, self.dir / "last.json")
            # rewritten whole: a resumed epoch is never logged twice
            atomic_write("".join(json.dumps(r) + "\n" for r in state["history"]), self.dir / "log.jsonl")
            self.prune_top(keep)  # after last.json: a run killed before has them all still
        dist.barrier()  # the other ranks read nothing before rank 0 has written it

    def prune_top(self, keep: set[int]) -> None:
        """Unlinks the weights of every epoch in ``top/`` but ``keep``'s, found by listing the folder:
        an epoch a kill left there between ``last.json`` and its unlinking goes too."""
        names = {self.top_file(e).name for e in keep}
        for path in (self.dir / "top").glob("epoch*.safetensors"):
            if path.name not in names:
                path.unlink(missing_ok=True)

    def finish(self, summary: dict, best_epoch: int) -> None:
        """``done.json``; the optimizer state goes, and ``top/`` keeps the best epoch's own weights only."""
        dist.barrier()
        if dist.is_main():
            atomic_json(summary, self.dir / "done.json")
            self.last.unlink(missing_ok=True)
            self.prune_top({best_epoch})
        dist.barrier()


def ranked(history: list[dict]) -> list[int]:
    """The epochs of ``history`` from best to worst by validation score (ties: the earlier first)."""
    return [r["epoch"] for r in sorted(history, key=lambda r: (-r["valid_score"], r["epoch"]))]


def kept_epochs(history: list[dict], average: int) -> set[int]:
    """The epochs whose weights ``top/`` must hold: the ``average`` best (none with average 1: the best
    epoch alone needs none)."""
    return set(ranked(history)[:average]) if average > 1 else set()


def average_weights(paths: list[Path]) -> dict:
    """The mean of several state dicts (checkpoint averaging); integer tensors (counters) from the first."""
    states = [load_file(str(p)) for p in paths]
    return {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}

