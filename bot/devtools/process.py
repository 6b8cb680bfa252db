"""A child process that never outlives us (the embedded homeservers run in one).

* it runs in its own process group, and ``stop``/``kill`` signal the whole group and
  reap it;
* a ``weakref.finalize`` per running process SIGKILLs the group if the
  :class:`ChildProcess` is garbage-collected or the interpreter exits normally
  (finalizers run at exit) without being stopped;
* on Linux the child asks the kernel for SIGKILL when its parent dies
  (``PR_SET_PDEATHSIG``), which also covers a parent killed by a signal, where no
  Python code runs at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import weakref
from collections.abc import Sequence
from pathlib import Path

# The child runs this before becoming the real program (exec keeps the pid, and the
# death signal survives execve): it asks Linux to SIGKILL it when the parent dies,
# then checks that the parent did not die already, before the prctl took effect.
_LAUNCHER = """\
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def signal_group(pgid: int, sig: signal.Signals) -> None:
    # Also the finalizer's callback: so it must not refer to the ChildProcess (that
    # would keep it alive forever) and must tolerate the group being gone already.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ChildProcess:
    """One ``python <args>`` child at a time, in its own process group."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[int, signal.Signals], ChildProcess] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def poll(self) -> int | None:
        """The exit code, or ``None`` while it runs (or before it was spawned)."""
        return self._proc.poll() if self._proc is not None else None

    def spawn(self, python_args: Sequence[str], *, cwd: Path, log_path: Path) -> None:
        """Start ``python <python_args>`` with stdout and stderr appended to ``log_path``."""
        argv = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *python_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Popen blocks only for the fork/exec (milliseconds), and it must run on the
        # event loop's thread: Linux sends the death signal when the *thread* that forked
        # the child exits, so forking from a pool thread could kill it when the pool shrinks.
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                # Own process group: signals sent to our terminal's group (Ctrl-C) don't
                # hit the child half-way through a test, and we can signal all of it.
                start_new_session=True,
            )
        self._finalizer = weakref.finalize(self, signal_group, self._proc.pid, signal.SIGKILL)

    async def signal_and_reap(self, sig: signal.Signals, grace: float) -> None:
        """Send ``sig`` to the group, wait up to ``grace`` seconds, then SIGKILL."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            signal_group(proc.pid, sig)
            try:
                await asyncio.to_thread(proc.wait, grace)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                # SIGKILL cannot be ignored; this wait is short and reaps the zombie.
                await asyncio.to_thread(proc.wait)
        # The process is reaped, so its pid (= group id) may be reused: the finalizer
        # must never signal it again.
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None
