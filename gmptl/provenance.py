"""Where a result came from: the code's commit (pinned when a run starts), machine, date."""

import functools
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path


@functools.lru_cache(maxsize=1)
def code_version() -> tuple[str | None, bool | None]:
    """The commit of the code this process runs and whether its package files differed from it.

    Read once, on the first call (the CLI makes it at start-up): a run that lasts
    hours records the code it started with, not a commit made while it ran.
    """
    here = Path(__file__).parent

    def git(*args) -> str | None:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=here, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    # A copy of the tree elsewhere (no .git, or a stale one) says where it came from.
    if os.environ.get("GMPTL_COMMIT"):
        return os.environ["GMPTL_COMMIT"], None
    commit = git("rev-parse", "--verify", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", str(here))
    return commit, None if status is None else bool(status)


def provenance() -> dict:
    """Commit (of the code at start-up, and whether it was modified), machine and date, for every result file."""
    commit, dirty = code_version()
    import torch
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    machine = f"{platform.node()} {platform.machine()}, {torch.get_num_threads()} torch threads{gpu}"
    return {"commit": commit, "modified": dirty, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine, "python": platform.python_version(), "torch": torch.__version__}


def matmul_gflops(n: int = 2048, repeat: int = 3) -> float:
    """This machine's fp32 matmul rate in GFLOP/s: the best of ``repeat`` ``(n, n) @ (n, n)`` products (after one
    that warms up) on the threads torch uses. A time measured here times this rate over another machine's rate is
    that time on the other machine, for work dominated by fp32 matmuls as training an encoder is."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9
