"""A process-wide memory setting that makes XLA:CPU markedly faster."""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems


def keep_freed_memory() -> bool:
    """Stops glibc from handing large freed blocks back to the OS after every use.

    XLA:CPU allocates and frees its large temporaries on every step of a loop. With
    glibc's defaults each is a fresh mmap whose pages fault in again: measured on a 2-core
    VM, half of MC scoring's time went to the kernel, and this setting made scoring about
    1.7x faster. Freed memory stays in the process heap for reuse instead. Call it once,
    early; `jal`'s command line does. Returns False (and changes nothing) without glibc.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        and mallopt(_M_TOP_PAD, 64 * 1024 * 1024)
    )
