"""Give freed memory back to the OS after a scan over every part of a run.

Recovery, compaction, the manifest and the quality report read a run one part at a time, so
what they hold is bounded by a part; but the allocators keep what they freed (glibc's heap
after large numpy temporaries, Arrow's mimalloc pool after each part's buffers), and at a
million trees that cache was ~70 MB of the driver's RSS. Measured with benchmarks/driver_memory.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def release_freed_memory() -> None:
    """Trim glibc's heap (where the C library is glibc) and Arrow's pool; a no-op elsewhere."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)
