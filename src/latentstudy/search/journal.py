"""The Optuna journal file, the one-host storage, made safe against torn writes.

A crash or a full disk can leave the journal's last record half-written. Optuna skips such a
line when reading, then appends the next record onto it, and from then on every read fails with
a bare JSONDecodeError. Here, under Optuna's own file lock, a last line that is not a complete
record is cut off (and kept aside) before anything is appended, and an unreadable record in the
middle stops the search with the file, the line and what to do.

Cutting the last line is safe: no process ever applied it (Optuna skips an unreadable last
line), so every process's view of the study stays what it was.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from latentstudy.config import StudyError, store_fault

TORN_SUFFIX = ".torn"  # where cut-off fragments are kept, for inspection
_BLOCK = 1 << 16
_SET_STATE = 6  # the journal's op code for a trial's state (optuna's JournalOperation.SET_TRIAL_STATE_VALUES)


class CheckedJournal(JournalFileBackend):
    """A JournalFileBackend that never appends onto a torn line and names a damaged line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = JournalFileSymlinkLock(str(self.path))
        super().__init__(str(self.path), lock_obj=self.lock)
        self.lock.acquire()
        try:
            cut_torn_tail(self.path)
        finally:
            self.lock.release()

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        try:
            yield from super().read_logs(log_number_from)
        except ValueError:  # JSONDecodeError included: a damaged record before the last line
            raise StudyError(damage_message(self.path)) from None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
        self.lock.acquire()
        try:
            cut_torn_tail(self.path)  # a writer that died mid-record since we last looked
            with open(self.path, "ab") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # a part written stays a torn line, cut by the next writer
            fault = store_fault(self.path, exc)
            if fault is None:
                raise
            raise fault from None
        finally:
            self.lock.release()


def _last_line_start(f, size: int) -> int:
    """Offset of the last line's first byte: just past the newline before it (0 if none)."""
    end = size - 1  # a final newline belongs to the last line
    pos = end
    while pos > 0:
        step = min(_BLOCK, pos)
        f.seek(pos - step)
        i = f.read(step).rfind(b"\n")
        if i >= 0:
            return pos - step + i + 1
        pos -= step
    return 0


def _is_record(line: bytes) -> bool:
    if not line.endswith(b"\n"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _count_lines(path: Path, upto: int) -> int:
    count, done = 0, 0
    with open(path, "rb") as f:
        while done < upto:
            chunk = f.read(min(_BLOCK, upto - done))
            if not chunk:
                break
            count += chunk.count(b"\n")
            done += len(chunk)
    return count


def cut_torn_tail(path: Path) -> bytes | None:
    """Cut a last line that is not a complete record; returns the fragment, or None if the file
    was whole. The caller holds the journal's lock, so no writer is mid-record."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        start = _last_line_start(f, size)
        f.seek(start)
        last = f.read()
        if _is_record(last):
            return None
        f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
    with open(str(path) + TORN_SUFFIX, "ab") as keep:
        keep.write(last.rstrip(b"\n") + b"\n")
    line = _count_lines(path, start) + 1
    print(f"warning: {path}: line {line} was a torn record (a write cut short by a crash or a full disk); "
          f"removed it ({len(last)} bytes, kept in {path}{TORN_SUFFIX}); the {line - 1} complete records "
          "before it are intact", file=sys.stderr, flush=True)
    return last


def damage_message(path: Path) -> str:
    """One line: which line of the journal is unreadable, and exactly how to go on."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    # the text after the last newline is a line still being written: not damage
    complete = lines[:-1]
    bad = next((i for i, line in enumerate(complete) if not _is_record(line + b"\n")), None)
    if bad is None:
        return f"{path}: unreadable, but every line parses now; rerun"
    after = sum(1 for line in complete[bad + 1:] if _finishes_a_trial(line))
    return (f"{path}: line {bad + 1} of {len(complete)} is not a complete record (damaged by a crash, a full "
            f"disk or an edit), so the study cannot be read past it. To keep the {bad} records before it "
            f"({after} finished trials recorded after it would run again): mv {path} {path}.damaged && "
            f"head -n {bad} {path}.damaged > {path}, then rerun; or move {path} aside to start afresh")


def _finishes_a_trial(line: bytes) -> bool:
    from optuna.trial import TrialState

    try:
        record = json.loads(line)
    except ValueError:
        return False
    return (isinstance(record, dict) and record.get("op_code") == _SET_STATE
            and record.get("state") == TrialState.COMPLETE.value)
