"""A pool that stays where it lies on the host: read a piece at a time, and not kept resident.

`make_pool` draws a pool as indices into the training split, and indexing a memory-mapped
split with all of them would copy the whole pool into memory. `PoolRows` is the pool as a
lazy view instead: `rows[a:b]` (or `rows[positions]`) reads those pool inputs alone.

Every page a memory map reads stays in the process's resident memory until it is
unmapped, and the kernel maps more than the page read: with the page cache's large folios,
up to 2 MB around it. Rows read at random through a map would soon hold the whole file.
So `PoolRows` reads a memory-mapped split's rows with `pread` from its file, which maps
nothing; and after reading a block of rows in order through a map, a reader calls
`release`, which drops the pages from the process (they stay in the kernel's page cache,
where the next read finds them).
"""

from __future__ import annotations

import math
import mmap
import os

import numpy as np


def _memory_map(array) -> np.memmap | None:
    """The memory map `array` is a view of, if any."""
    while isinstance(array, np.ndarray) and not isinstance(array.base, mmap.mmap):
        array = array.base
    return array if isinstance(array, np.memmap) else None


def release(array) -> None:
    """Drops the pages a read of a memory-mapped array brought in from this process's resident memory.

    Anything else, and a copy-on-write map (whose changes live in those pages), is left alone.
    """
    mapped = _memory_map(array)
    if mapped is not None and mapped.mode in ("r", "r+") and hasattr(mmap, "MADV_DONTNEED"):
        mapped.base.madvise(mmap.MADV_DONTNEED)


def file_rows(array) -> tuple[str, int] | None:
    """(its file, the byte offset of row 0) for a memory-mapped array whose rows lie whole, one after another.

    None for anything else: an array in memory, or a map of every other column.
    """
    mapped = _memory_map(array)
    row_bytes = array.dtype.itemsize * math.prod(array.shape[1:])
    if mapped is None or mapped.filename is None or array.strides[0] != row_bytes or not array[:1].flags.c_contiguous:
        return None
    return mapped.filename, mapped.offset + array.ctypes.data - mapped.ctypes.data


class PoolRows:
    """The pool inputs `array[indices]` [P, ...], read only where indexed.

    Args:
      array: the training split's inputs [N, ...], a numpy array or memmap.
      indices: [P] the training-split index of each pool input (`make_pool`).
    """

    def __init__(self, array, indices):
        self.array, self.indices = array, np.asarray(indices)
        self.shape = (len(self.indices), *array.shape[1:])
        self.dtype = array.dtype
        self.ndim = len(self.shape)
        self.file = file_rows(array)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        """The pool inputs at `key`, a slice or a 1-D array of pool positions, read into memory."""
        positions = self.indices[key]
        if self.file is None:
            rows = np.asarray(self.array[positions])
            release(self.array)
            return rows
        rows = np.empty((len(positions), *self.shape[1:]), self.dtype)
        flat = rows.reshape(len(rows), -1)
        path, start = self.file
        fd = os.open(path, os.O_RDONLY)
        try:
            for row, index in zip(flat, positions.tolist(), strict=True):
                os.preadv(fd, [row], start + index * row.nbytes)
        finally:
            os.close(fd)
        return rows
