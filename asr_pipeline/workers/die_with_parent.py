"""Run a command that dies with the process that started it:

    python -m asr_pipeline.workers.die_with_parent -- torchrun ... 

Linux delivers SIGTERM to this process when its parent (the Dagster run worker) dies, even by `kill -9`, and the
exec below keeps that setting; torchrun then stops its training processes. Without it, a killed run would leave the
training running on, holding GPUs and writing into a work directory the retried run resumes from.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SystemExit("usage: python -m asr_pipeline.workers.die_with_parent -- COMMAND [ARGS...]")
    parent = os.getppid()
    # the signal must take effect: an ignored or blocked SIGTERM inherited from the process that started us (both
    # survive fork and exec) would keep the command alive after its parent died
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        raise SystemExit("parent exited before the command started")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
