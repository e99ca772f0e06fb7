"""`python -m bench.pagecache [MiB]`: how fast this machine writes new files into the page cache.

A cold fill writes every byte into the page cache; nginx and the direct download never write. On
some VMs a page new to the guest costs far more to touch than a reused one, so the first file is
slow and the next (reusing the freed pages) fast. This prints both, with no mirror involved.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

MIB = 1 << 20


def write_rate(size_mib: int, chunk: bytes) -> float:
    """MiB/s of writing a new file of `size_mib` in 1 MiB os.write calls (no fsync), then removing it."""
    with tempfile.TemporaryDirectory(prefix="hub-mirror-pagecache-") as folder:
        path = os.path.join(folder, "f")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            start = time.perf_counter()
            for _ in range(size_mib):
                os.write(fd, chunk)
            return size_mib / (time.perf_counter() - start)
        finally:
            os.close(fd)


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    chunk = os.urandom(MIB)
    for attempt in range(1, 5):
        print(f"write {attempt}: {write_rate(size, chunk):,.0f} MiB/s ({size} MiB new file)", flush=True)


if __name__ == "__main__":
    main()
