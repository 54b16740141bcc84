"""Child processes that die with the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # prctl(2)


def dies_with(parent: int | None = None) -> Callable[[], None]:
    """Run in the child before it starts (``preexec_fn``): the kernel sends it SIGTERM
    when ``parent`` (default: this process) dies, however it dies (SIGKILL included),
    so no child outlives it and holds its ports."""
    parent = os.getpid() if parent is None else parent

    def arrange() -> None:
        if sys.platform == "linux":
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(1)

    return arrange
