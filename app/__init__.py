"""kilotask: sub-kilobyte fine-tuned tasks (intrinsic-dimension subspace fine-tuning), served."""

import ctypes
import os
import sys

# Large CPU tensors (D floats, rebuilt every step) on transparent huge pages: a fresh 90 MB
# buffer otherwise costs ~20k page faults, more than the arithmetic on it. torch reads this
# once, at its first allocation, so it must be set before torch is imported.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _keep_freed_memory() -> None:
    """glibc hands every block over 32 MB back to the kernel when it is freed, so each training
    step pays page faults and zeroing again for its D-sized buffers (on a VM, far more than the
    arithmetic). Serving big blocks from the heap and keeping up to 1 GB of freed heap makes a
    step reuse the memory of the last one. MiniLM-L6 SAID step on 2 cores: 2358 -> 1687 ms.
    KILOTASK_MALLOC_TUNING=0 leaves glibc's defaults alone."""
    if not sys.platform.startswith("linux") or os.environ.get("KILOTASK_MALLOC_TUNING") == "0":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)  # threads' arenas still fall back to mmap for huge blocks
    libc.mallopt(m_trim_threshold, 1 << 30)


_keep_freed_memory()
