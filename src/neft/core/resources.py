"""Peak memory, measured one way: this process's peak RSS (CPU) and peak allocated CUDA
memory. `neft bench` resets the kernel's high-water mark around its timed steps instead
(experiments.bench.MemoryMeter), which needs /proc and a reset this reading does not do."""

from __future__ import annotations

import resource
import sys

import torch


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on
    macOS); it includes everything the process did."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def peak_cuda_mb() -> float | None:
    """Peak allocated CUDA memory since the last reset, None without CUDA."""
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def peak_memory_mb() -> float:
    """Peak allocated CUDA memory where CUDA is used, else the peak RSS, in MB."""
    cuda = peak_cuda_mb()
    return round(cuda if cuda is not None else peak_rss_mb(), 1)
