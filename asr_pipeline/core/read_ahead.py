"""Start reading the next clips' files before the decoding threads get to them.

Each decoding thread reads its clip's file and waits for the disk or the NAS while it does, so with two workers at
most two reads are in flight and a cold cache or a NAS's latency is paid clip after clip. posix_fadvise(WILLNEED)
asks the kernel to read a file into the page cache in the background and returns at once: called on the files of
the window of clips the workers are about to decode, their reads overlap each other and the decoding.
"""

from __future__ import annotations

import os
import stat
from typing import Iterable

from asr_pipeline.core.settings import AudioRoots

# at most this much of a file is asked for: a clip the limits keep is far smaller (30 s of 96 kHz 24-bit stereo is
# 17 MB), and a row pointing at an hour-long programme is refused from its header, so reading it whole would be waste
READ_AHEAD_BYTES = 32 * 2**20

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def read_ahead(paths: Iterable[str | None], roots: AudioRoots | None = None) -> int:
    """Ask the kernel to start reading each regular file among paths, in order; returns how many it was asked for.

    Advisory only, and never opens what the decoder would refuse to: a path outside roots (when given), a missing
    file, or anything but a regular file (a FIFO would block an open, a device could be read from) is skipped, and
    any error is ignored; the decoder reports those rows. Without posix_fadvise (not Linux) it does nothing."""
    if not hasattr(os, "posix_fadvise"):
        return 0
    asked = 0
    for path in paths:
        if not path:
            continue
        try:
            if roots is not None:
                path = roots.resolve(path)
                if path is None:
                    continue
            if not stat.S_ISREG(os.stat(path).st_mode):
                continue
            fd = os.open(path, _OPEN_FLAGS)
        except (OSError, ValueError, RuntimeError):  # missing, unreadable, a NUL byte, a symbolic-link loop
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):  # still a regular file: it could have been swapped since the stat
                os.posix_fadvise(fd, 0, READ_AHEAD_BYTES, os.POSIX_FADV_WILLNEED)
                asked += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return asked
