"""A command's output files, written whole or not at all.

    with new_file("report.html") as tmp:
        tmp.write_text(page)            # becomes report.html once the block succeeds

A file is written under a temporary name beside its destination and then renamed onto
it, so a reader sees the old file or the whole new one. A folder of files is filled in a
temporary folder beside its destination first. If anything fails, nothing is left behind:
not the temporary file or folder, nor the folders made for the output. What the operating
system refuses (a name too long, a folder not writable, a full disk) becomes a one-line
JalError.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from jal.errors import JalError


def _temporary(folder: Path) -> Path:
    """A name in `folder` for content not yet whole: hidden, this process's own, and short."""
    return folder / f".jal-{os.getpid()}.tmp"


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and the folders above it that do not exist yet, the deepest first."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def _remove_folders(folders: list[Path]) -> None:
    for folder in folders:  # the deepest first; a folder something else has filled meanwhile stays
        with contextlib.suppress(OSError):
            folder.rmdir()


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


@contextlib.contextmanager
def _undone_on_failure(out: Path, temporary: Path):
    """Removes `temporary`, and the folders above `out` this made, if the block fails; an OSError becomes a JalError."""
    made = []
    try:  # even asking whether a path exists fails where its name is too long
        made = _missing_folders(out.parent)
        out.parent.mkdir(parents=True, exist_ok=True)
        yield
    except BaseException as e:
        _discard(temporary)
        _remove_folders(made)
        if isinstance(e, OSError):
            raise JalError(f"`out` {out}: cannot write it ({e}); choose a writable place with free space") from e
        raise


@contextlib.contextmanager
def new_file(out: str | os.PathLike):
    """Yields a temporary path for the block to write; once it succeeds, that file replaces `out`."""
    out = Path(out)
    tmp = _temporary(out.parent)
    with _undone_on_failure(out, tmp):
        if out.is_dir():
            raise JalError(f"`out` {out}: a folder; give a file name")
        yield tmp
        os.replace(tmp, out)


@contextlib.contextmanager
def new_folder(out_dir: str | os.PathLike):
    """Yields an empty temporary folder for the block to fill; once it succeeds, what it holds moves into `out_dir`.

    `out_dir` may exist: its files of the same names are replaced, the others kept.
    """
    out_dir = Path(out_dir)
    tmp = _temporary(out_dir.parent)
    with _undone_on_failure(out_dir, tmp):
        if out_dir.exists() and not out_dir.is_dir():
            raise JalError(f"`out` {out_dir}: a file, not a folder; choose another `out`")
        _discard(tmp)  # left by a killed process that had this one's id
        tmp.mkdir()
        yield tmp
        _move_into(tmp, out_dir)


def _move_into(folder: Path, out_dir: Path) -> None:
    """Moves `folder` to `out_dir`; where `out_dir` exists, file by file, once nothing is in the way of any."""
    if not out_dir.exists():
        os.replace(folder, out_dir)
        return
    names = sorted(p.relative_to(folder) for p in folder.rglob("*") if not p.is_dir())
    for name in names:
        if (blocking := _in_the_way(out_dir, name)) is not None:
            raise JalError(f"`out` {out_dir}: {blocking} is in the way of {name}; move it or choose another `out`")
    for name in names:
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder / name, out_dir / name)
    shutil.rmtree(folder)


def _in_the_way(out_dir: Path, name: Path) -> Path | None:
    """What in `out_dir` keeps the file `name` from moving in: a folder of its name, or a file where a folder goes."""
    target = out_dir / name
    if target.is_dir():
        return target
    folders = [out_dir / parent for parent in reversed(name.parents)]  # out_dir itself first
    return next((p for p in folders if p.exists() and not p.is_dir()), None)
