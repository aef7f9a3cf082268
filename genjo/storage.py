"""Files on disk: crash-safe writes of files and folders, and JSON-lines text split into lines.

Crash-safe writes. New content goes to a temporary file or folder beside its destination, is flushed and
fsync'ed, and is then renamed into place. A rename within a folder is atomic, so whoever reads the
destination (a resumed run, a script loading a checkpoint) finds the old content or the new one, never a
mix, whenever the writer is killed. A folder of several files (a checkpoint) is written as ``NAME.saving``
and swapped in with two renames: the old folder steps aside as ``NAME.old`` and is removed only once the
new one is in place. A kill between the two renames leaves ``NAME.old`` alone; ``recover_folder`` (called
before every read of a folder that may be replaced, and before every swap) puts it back.

JSON lines. A line ends at ``\\n`` (a ``\\r`` before it is dropped) and nowhere else: ``str.splitlines``
would also split at U+2028, U+2029, U+0085 and other separators that JSON strings may hold raw (Genjo's own
writers emit them with ``ensure_ascii=False``). Every JSON-lines reader of the package splits here.
"""

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Union

STAGING_SUFFIX = ".saving"  # a folder being written; removed by the next save when a kill left it
RETIRED_SUFFIX = ".old"  # the previous folder during a swap


# ----------------------------------------------------------------------------- crash-safe writes


def fsync_path(path: Union[str, Path]) -> None:
    """Flush a file, or a folder's entries, to the disk (a folder only where the OS allows opening one)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are flushed by the file system itself
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Union[str, Path]) -> None:
    """fsync every file and folder under root (root included)."""
    for folder, _, names in os.walk(root):
        for name in names:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


def write_text_atomic(path: Union[str, Path], text: str, encoding: str = "utf-8") -> None:
    """Replace the file at path by text: written to ``path.tmp`` beside it, fsync'ed, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding=encoding, newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def staging_folder(folder: Union[str, Path]) -> Path:
    """Where the next version of folder is written before it is swapped in: ``NAME.saving`` beside it."""
    folder = Path(folder)
    return folder.with_name(folder.name + STAGING_SUFFIX)


def retired_folder(folder: Union[str, Path]) -> Path:
    """Where the previous version of folder waits during a swap: ``NAME.old`` beside it."""
    folder = Path(folder)
    return folder.with_name(folder.name + RETIRED_SUFFIX)


def recover_folder(folder: Union[str, Path]) -> None:
    """Finish a swap that a kill interrupted: ``NAME.old`` goes back to NAME when NAME is missing (the kill
    fell between the two renames), and is removed when NAME is there (the kill fell during its removal)."""
    folder, old = Path(folder), retired_folder(folder)
    if not old.exists():
        return
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(old, folder)
        fsync_path(folder.parent)


def is_replaceable_folder(folder: Union[str, Path]) -> bool:
    """Whether a swap may replace folder as a whole: it is missing, empty, or a checkpoint (holds config.json),
    never a folder of other files (a save aimed at ``~/models`` by mistake must not delete it)."""
    folder = Path(folder)
    if not folder.exists():
        return True
    return folder.is_dir() and (not any(folder.iterdir()) or (folder / "config.json").is_file())


def prepare_staging(folder: Union[str, Path]) -> Path:
    """An empty ``NAME.saving`` beside folder (a leftover of a killed save is removed first); parents created.
    FileExistsError when folder may not be replaced (``is_replaceable_folder``), before anything is written."""
    recover_folder(folder)
    if not is_replaceable_folder(folder):
        raise FileExistsError(f"{folder} exists and is not a checkpoint folder (no config.json); it is left as it "
                              "is: save to a new folder.")  # fmt: skip
    staging = staging_folder(folder)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def commit_folder(staging: Union[str, Path], folder: Union[str, Path]) -> None:
    """Swap a completely written staging folder in as folder: fsync it, move the old folder aside, rename the
    staging folder into place, then remove the old one. At every instant a complete version exists, as
    folder or (between the two renames only) as ``NAME.old``, which ``recover_folder`` puts back."""
    staging, folder, old = Path(staging), Path(folder), retired_folder(folder)
    fsync_tree(staging)
    recover_folder(folder)  # folder, if any, is now the last good version and no NAME.old is left
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    fsync_path(folder.parent)
    if old.exists():
        shutil.rmtree(old)


@contextmanager
def replacing_folder(folder: Union[str, Path]) -> Iterator[Path]:
    """Write a new version of folder into the yielded staging folder; on success it replaces folder
    (``commit_folder``), on an exception it is removed and folder stays as it was.

        with replacing_folder("runs/x/final") as staging:
            model.save_pretrained(staging)
    """
    staging = prepare_staging(folder)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit_folder(staging, folder)


# ----------------------------------------------------------------------------- JSON lines


def decode_line(raw: bytes, where: str) -> str:
    """One line of a file as text (UTF-8; a UTF-8 byte-order mark and the "\\n" / "\\r\\n" end dropped).

    where: the file and line for the error, e.g. "data.jsonl, line 3". Raises ValueError for bytes that are
    not UTF-8, naming where and the offending byte.
    """
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{where}: not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1}); "
                         "save the file as UTF-8.") from None  # fmt: skip


def read_lines(path: Union[str, Path], complete_only: bool = False) -> list[str]:
    """The lines of a UTF-8 JSON-lines file, split at b"\\n" only (a final newline ends the last line rather
    than starting another), each decoded by ``decode_line``. complete_only: drop a last line without its
    newline (the interrupted write of a file that is appended to). Streaming readers read a line with a
    binary ``readline()``, which splits the same way, and decode it with ``decode_line``."""
    raw_lines = Path(path).read_bytes().split(b"\n")
    if raw_lines[-1] == b"" or complete_only:
        raw_lines.pop()  # after the last newline: nothing, or an interrupted line
    return [decode_line(raw, f"{path}, line {number}") for number, raw in enumerate(raw_lines, start=1)]
