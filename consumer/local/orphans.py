"""Child processes that cannot outlive their parent, however the parent dies (SIGKILL included).

Linux's `prctl(PR_SET_PDEATHSIG, SIGKILL)` asks the kernel to kill a process when its parent goes.
It survives `exec` (unless the program is set-user-ID), so a launcher script that `exec`s its real
server passes it on. The signal follows the *thread* that forked the child: start children from a
thread that lives as long as they should (the main thread). Elsewhere than Linux these do nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def with_death_signal(cmd: Sequence[str]) -> list[str] | None:
    """`cmd` run through util-linux's `setpriv --pdeathsig KILL`, which arms the death signal and
    `exec`s it (None when setpriv is missing, or off Linux). Preferred to `die_with_parent`: a
    `preexec_fn` makes CPython fork() instead of vfork(), which runs every library's fork handlers,
    and gRPC's can deadlock a process whose gRPC threads are busy (seen in the test suite).
    Unlike `die_with_parent`, it cannot notice a parent that died within the microseconds between
    the fork and setpriv's prctl."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return None if setpriv is None else [setpriv, "--pdeathsig", "KILL", "--", *cmd]


def die_with_parent() -> Callable[[], None] | None:
    """A `subprocess.Popen(preexec_fn=…)` that arms the death signal in the child (None off Linux)."""
    prctl = _prctl()  # resolved before the fork: the child only calls it
    if prctl is None:
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody would signal us
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


def die_with_parent_now(expected_parent: int) -> None:
    """Arms the death signal in this process (e.g. a freshly forked gunicorn worker)."""
    prctl = _prctl()
    if prctl is None:
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != expected_parent:
        os.kill(os.getpid(), signal.SIGKILL)
