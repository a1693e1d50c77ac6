"""The CPU a benchmark ran on (every figure is recorded with it): torch-free, shared by the bench scripts."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The processor's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
