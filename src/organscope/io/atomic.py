"""Atomic writes: a file (or folder) is complete or absent, never half-written (temp name + rename).

    with atomic_paths(a, b) as (tmp_a, tmp_b):   write the temp paths; on success each replaces its target
        ...
    write_text_atomic(path, text)                 one text file
    temp_dir_beside(folder)                       an empty folder to fill, then os.replace(tmp, folder)
    current_umask()                               the process umask, read without changing it

New files get the usual permissions (0o666 less the umask) because the temp files are created with
`os.open(..., 0o666)` and the kernel applies the umask, as for any new file; nothing here changes the
process-wide umask (which would race with other threads, e.g. the server's).
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

from ..errors import InputError

__all__ = ["atomic_paths", "write_text_atomic", "temp_dir_beside", "current_umask"]


def _temp_name(target: Path, suffix: str) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp{suffix}")


def _create_temp_file(target: Path) -> Path:
    """An empty new file next to `target` (same suffix, so writers that pick a format by name still can)."""
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".gz") else target.suffix
    for _ in range(100):
        tmp = _temp_name(target, suffix)
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # the kernel applies the umask
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"No free temporary name next to {target}.")  # pragma: no cover


def temp_dir_beside(folder: str | os.PathLike) -> Path:
    """A new empty folder next to `folder` (permissions 0o777 less the umask) to fill and then rename onto it."""
    folder = Path(folder)
    for _ in range(100):
        tmp = _temp_name(folder, "")
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"No free temporary name next to {folder}.")  # pragma: no cover


@contextlib.contextmanager
def atomic_paths(*targets: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield temp paths (same folders, same suffixes) to write; on success each replaces its target.

    On any error the temp files are removed and no new output remains.
    """
    temps: list[Path] = []
    replaced: list[Path] = []
    try:
        for target in targets:
            target = Path(target)
            if not target.parent.is_dir():
                raise InputError(f"Cannot write {target}: the folder {target.parent} does not exist.")
            temps.append(_create_temp_file(target))
        yield temps
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
            replaced.append(Path(target))
    except BaseException:
        for tmp in temps + replaced:  # a half-finished replace leaves no partial output
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (exactly as given: no newline translation)."""
    with atomic_paths(path) as (tmp,):
        with open(tmp, "w", encoding=encoding, newline="") as fh:
            fh.write(text)


def current_umask() -> int:
    """The process umask, read without changing it: /proc/self/status on Linux, else the mode of a probe file
    created with 0o666 in the temporary folder."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    import tempfile

    probe = _create_temp_file(Path(tempfile.gettempdir()) / "organscope-umask-probe")
    try:
        return 0o666 & ~probe.stat().st_mode  # the bits a 0o666 file lost: the umask's r/w bits
    finally:
        probe.unlink()
