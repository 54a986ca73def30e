"""Atomic writes: a file (or folder) is complete or absent, never half-written (temp name + rename).

    with atomic_paths(a, b) as (tmp_a, tmp_b):   write the temp paths; on success each replaces its target
        ...
    write_text_atomic(path, text)                 one text file
    temp_dir_beside(folder)                       an empty folder to fill, then os.replace(tmp, folder)
    current_umask()                               the process umask, read without changing it
    staged_path(target); commit([(staged, target)])   stage several outputs, then move them all into place or none
    check_not_input(outputs, inputs)              InputError if an output would overwrite an input

New files get the usual permissions (0o666 less the umask) because the temp files are created with
`os.open(..., 0o666)` and the kernel applies the umask, as for any new file; nothing here changes the
process-wide umask (which would race with other threads, e.g. the server's).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from ..errors import InputError

__all__ = ["atomic_paths", "write_text_atomic", "temp_dir_beside", "current_umask", "staged_path", "commit",
           "remove_path", "check_not_input", "check_writable"]


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
        except OSError as e:
            raise InputError(f"Cannot write {folder}: {e.strerror or type(e).__name__}.") from None
        return tmp
    raise FileExistsError(f"No free temporary name next to {folder}.")  # pragma: no cover


@contextlib.contextmanager
def atomic_paths(*targets: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield temp paths (same folders, same suffixes) to write; on success each replaces its target.

    On any error (or signal turned into an exception) the temp files are removed, no new output remains and the
    files that were there before are left as they were, even when an error strikes between two renames.
    """
    temps: list[Path] = []
    try:
        for target in targets:
            target = Path(target)
            if not target.parent.is_dir():
                raise InputError(f"Cannot write {target}: the folder {target.parent} does not exist.")
            try:
                temps.append(_create_temp_file(target))
            except OSError as e:
                raise InputError(f"Cannot write {target}: {e.strerror or type(e).__name__}.") from None
        yield temps
        commit(list(zip(temps, map(Path, targets))))
    except BaseException:
        for tmp in temps:
            remove_path(tmp)
        raise


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file, link or folder tree if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def staged_path(target: str | os.PathLike) -> Path:
    """A hidden free name next to `target` (same suffix) to write a file or folder that `commit` moves there."""
    target = Path(target)
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".gz") else target.suffix
    for _ in range(100):
        tmp = _temp_name(target, suffix)
        if not os.path.lexists(tmp):
            return tmp
    raise FileExistsError(f"No free temporary name next to {target}.")  # pragma: no cover


def commit(pairs: list[tuple[Path, Path]]) -> None:
    """Move every staged path onto its target, all or none: a target that existed is first set aside and put
    back if a later move fails (or a signal strikes), and deleted only once every move has succeeded. A staged
    folder onto an existing folder moves its files one by one into it (the folder's other files stay)."""
    moves: list[tuple[Path, Path]] = []
    for staged, target in pairs:
        staged, target = Path(staged), Path(target)
        if staged.is_dir() and target.is_dir():
            moves += [(f, target / f.name) for f in sorted(staged.iterdir())]
        else:
            moves.append((staged, target))
    backups: list[tuple[Path, Path]] = []
    done: list[Path] = []
    try:
        for staged, target in moves:
            if os.path.lexists(target):
                if target.is_dir() and not target.is_symlink():
                    raise InputError(f"Cannot write {target}: a folder of that name is in the way.")
                backup = _temp_name(target, ".old")
                os.rename(target, backup)
                backups.append((backup, target))
            os.rename(staged, target)
            done.append(target)
    except BaseException as e:
        for target in done:
            remove_path(target)
        for backup, target in backups:
            os.replace(backup, target)
        if isinstance(e, OSError):
            raise InputError(f"Cannot write {target}: {e.strerror or type(e).__name__}.") from None
        raise
    for backup, _ in backups:
        remove_path(backup)
    for staged, _ in pairs:  # an emptied staging folder
        if Path(staged).is_dir():
            remove_path(staged)


def check_writable(*paths: str | os.PathLike) -> None:
    """InputError unless each path's folder exists and can be written (checked before any long computation)."""
    for path in paths:
        if path is None:
            continue
        folder = Path(path).parent
        if not folder.is_dir():
            raise InputError(f"Cannot write {path}: the folder {folder} does not exist.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"Cannot write {path}: the folder {folder} is not writable.")


def check_not_input(outputs, inputs) -> None:
    """InputError if an output path is (or would replace) one of the input paths: the same file through a link,
    a different spelling or a hard link, or an input folder itself."""
    ins = [Path(i) for i in inputs if i is not None]
    for out in outputs:
        if out is None:
            continue
        out = Path(out)
        for inp in ins:
            same = out.resolve() == inp.resolve()
            if not same and out.exists() and inp.exists():
                with contextlib.suppress(OSError):
                    same = os.path.samefile(out, inp)
            if same:
                raise InputError(f"{out} would overwrite the input {inp}; write the outputs somewhere else.")


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
