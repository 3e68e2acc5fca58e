"""A read-only passthrough FUSE mount that waits in every read: a NAS's latency, roughly, for
benchmarks/read_ahead_benchmark.py --audio-mount.

    apt-get install -y fuse3 libfuse2 && python3 -m venv /tmp/fusevenv && /tmp/fusevenv/bin/pip install fusepy
    mkdir -p /mnt/slownas
    /tmp/fusevenv/bin/python benchmarks/slow_mount.py /tmp/asr_ingest_bench/corpus_1000 /mnt/slownas 0.002 &
    ...                                     # benchmarks; then: fusermount -u /mnt/slownas

Only reads wait (DELAY seconds each, on a thread of their own, so several can be in flight as on a network share);
opening and listing do not, so a real share, where opening costs a round trip too, is slower than this. The kernel
keeps what it read in its page cache across opens (kernel_cache), as NFS does while a file does not change.
Not a project dependency: fusepy and libfuse are needed for this script alone.
"""

import os
import sys
import time

from fuse import FUSE, Operations  # fusepy


class SlowReads(Operations):
    def __init__(self, root: str, delay: float):
        self.root, self.delay = root, delay

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def getattr(self, path, fh=None):
        st = os.lstat(self._path(path))
        return {key: getattr(st, key) for key in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink",
                                                  "st_size", "st_uid")}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._path(path))]

    def open(self, path, flags):
        return os.open(self._path(path), os.O_RDONLY)

    def read(self, path, size, offset, fh):
        time.sleep(self.delay)
        return os.pread(fh, size, offset)

    def release(self, path, fh):
        return os.close(fh)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit("usage: slow_mount.py SOURCE_DIR MOUNT_POINT DELAY_SECONDS")
    FUSE(SlowReads(sys.argv[1], float(sys.argv[3])), sys.argv[2], foreground=True, ro=True, nothreads=False,
         kernel_cache=True)
