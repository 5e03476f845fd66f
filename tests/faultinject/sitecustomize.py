"""Disk faults for the fault tests, in every Python process they start (this folder goes first on
PYTHONPATH, so the stage, its workers and their children all load it). CI runs as root on one file
system it cannot remount: root writes through chmod, so a full or read-only place is made here.

LATENTSTUDY_TEST_DISK = "<folder>:<bytes>": a disk of that size holds folder; a Python write to a
    file under it fails with ENOSPC once the files there would hold more, as on a small tmpfs.
LATENTSTUDY_TEST_READONLY = "<folder>": opening a file for writing, or making a folder, under it
    fails with EROFS, as on a read-only mount.
LATENTSTUDY_TEST_SQLITE = "full" | "readonly": every SQLite database opened through SQLAlchemy
    (MLflow's store) grows by no page (SQLite's own "database or disk is full"), or is read-only
    (SQLite's own "attempt to write a readonly database").
"""

import builtins
import errno
import io
import os

_open, _mkdir = io.open, os.mkdir


def _under(path, folder: str) -> bool:
    if isinstance(path, int):
        return False
    return os.path.abspath(os.fspath(path)).startswith(folder.rstrip("/") + "/")


def _used(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files
               if os.path.isfile(os.path.join(d, f)))


class _SmallDisk:
    """A file opened for writing on the small disk: writes that do not fit raise ENOSPC."""

    def __init__(self, file, folder: str, size: int):
        self._file, self._folder, self._size = file, folder, size

    def write(self, data):
        self._file.flush()
        if _used(self._folder) + len(data) > self._size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._file.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)

    def __iter__(self):
        return iter(self._file)

    def __getattr__(self, name):
        return getattr(self._file, name)


def _faulty_open(file, mode="r", *args, **kwargs):
    writing = any(c in mode for c in "wax+")
    readonly = os.environ.get("LATENTSTUDY_TEST_READONLY")
    if writing and readonly and _under(file, readonly):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(file))
    handle = _open(file, mode, *args, **kwargs)
    disk = os.environ.get("LATENTSTUDY_TEST_DISK")
    if writing and disk:
        folder, size = disk.rsplit(":", 1)
        if _under(file, folder):
            return _SmallDisk(handle, os.path.abspath(folder), int(size))
    return handle


def _faulty_mkdir(path, *args, **kwargs):
    readonly = os.environ.get("LATENTSTUDY_TEST_READONLY")
    if readonly and _under(path, readonly):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
    return _mkdir(path, *args, **kwargs)


def _sqlite(kind: str) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _limit(connection, _record):
        if "sqlite" not in type(connection).__module__:
            return
        cursor = connection.cursor()
        if kind == "readonly":
            cursor.execute("PRAGMA query_only = 1")
        else:
            pages = cursor.execute("PRAGMA page_count").fetchone()[0]
            cursor.execute(f"PRAGMA max_page_count = {max(pages, 1)}")
        cursor.close()


if os.environ.get("LATENTSTUDY_TEST_DISK") or os.environ.get("LATENTSTUDY_TEST_READONLY"):
    builtins.open = io.open = _faulty_open
    os.mkdir = _faulty_mkdir
if os.environ.get("LATENTSTUDY_TEST_SQLITE"):
    _sqlite(os.environ["LATENTSTUDY_TEST_SQLITE"])
