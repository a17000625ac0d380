"""A directory one process writes: its lock, its creation, and what a failure leaves behind.

    with workdir.writing(out, fresh=True, leftovers=..., committed=...):
        ...  # load data, check settings, write files

The lock is an advisory `flock` on the directory itself, taken before any data is read,
so a second writer fails at once; the kernel drops it when the holder dies, however it
dies, and no lock file is left behind. A fresh directory that fails before anything in it
is committed is removed, so that it never blocks a retry.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from jal.errors import JalError

TEMPORARY = ".tmp"  # the suffix of files written whole, then renamed into place


@contextlib.contextmanager
def lock(directory: Path):
    """Holds `directory` locked exclusively for the block; JalError at once if another process holds it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise JalError(f"{directory}: cannot open it ({e.strerror}); give a folder you can write") from e
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise JalError(
                f"{directory}: another jal process is writing it; wait for it to end or choose another `out`"
            ) from None
        yield directory
    finally:
        os.close(descriptor)


def remove_temporaries(directory: Path) -> None:
    """Files a killed writer left half-written (never renamed into place)."""
    for path in directory.glob(f".*{TEMPORARY}"):
        path.unlink(missing_ok=True)


def _exists(directory: Path) -> bool:
    try:
        return directory.exists()
    except OSError as e:  # a name too long, a loop of links: the OS refuses the path itself
        raise JalError(f"{str(directory)[:80]}...: the system refuses this path ({e.strerror}); choose another") from e


def _check_place(directory: Path) -> None:
    """Raises JalError unless `directory` could be created: its nearest existing parent is a writable folder."""
    if _exists(directory) and not directory.is_dir():
        raise JalError(f"{directory} exists and is not a folder; choose another `out`")
    parent = next(p for p in directory.absolute().parents if _exists(p))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise JalError(f"{directory}: cannot create it under {parent}; choose a writable place")


@contextlib.contextmanager
def writing(
    directory: str | os.PathLike, *, fresh: bool, leftovers: Callable[[Path], bool], committed: Callable[[], bool]
):
    """Holds `directory`'s lock while the block writes it.

    fresh: create it (absent, empty, or holding only `leftovers` of a start that never
    finished, which are cleared); else it must exist. If the block fails while `committed()`
    is False, a fresh directory is removed again. An OSError becomes a one-line JalError.
    """
    directory = Path(directory)
    if fresh:
        _check_place(directory)
    elif not _exists(directory) or not directory.is_dir():
        raise JalError(f"{directory}: no such folder; give an existing jal directory")
    existed = directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise JalError(f"{directory}: cannot create it ({e.strerror}); choose a writable place") from e
    created = not existed
    try:
        with lock(directory):
            if fresh and not leftovers(directory):
                raise JalError(f"{directory} exists and is not an empty folder; choose another `out` or remove it")
            try:
                if fresh:
                    for path in directory.iterdir():
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
                remove_temporaries(directory)
                yield directory
            except BaseException:
                if fresh and not committed():
                    _empty(directory)
                raise
    except OSError as e:
        raise JalError(f"{directory}: cannot write it ({e}); free some space or choose another `out`") from e
    finally:
        if created and not any(directory.iterdir()):
            directory.rmdir()


def _empty(directory: Path) -> None:
    for path in directory.iterdir():
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
