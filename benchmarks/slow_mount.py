"""A read-only passthrough FUSE filesystem that sleeps DELAY seconds in every read: a NAS's latency, roughly."""
import errno, os, sys, time
from fuse import FUSE, FuseOSError, Operations
class Slow(Operations):
    def __init__(self, root, delay): self.root, self.delay = root, delay
    def _p(self, path): return os.path.join(self.root, path.lstrip("/"))
    def getattr(self, path, fh=None):
        st = os.lstat(self._p(path))
        return {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid")}
    def readdir(self, path, fh): return [".", ".."] + os.listdir(self._p(path))
    def open(self, path, flags): return os.open(self._p(path), os.O_RDONLY)
    def read(self, path, size, offset, fh):
        time.sleep(self.delay)
        return os.pread(fh, size, offset)
    def release(self, path, fh): return os.close(fh)
if __name__ == "__main__":
    FUSE(Slow(sys.argv[1], float(sys.argv[3])), sys.argv[2], foreground=True, ro=True, nothreads=False, kernel_cache=True)
