"""How a worker's trials and its process are known to be alive: heartbeats for the open trials of a
stack (RDB storages fail a RUNNING trial whose heartbeat stops, search/store.reap_lost), and a
worker process that dies with the coordinator that started it."""

from __future__ import annotations

import os
import sys
import threading
import time


class Heartbeats:
    """RDB storages fail a RUNNING trial whose heartbeat stops. study.optimize beats for its one
    trial; a stack holds several open at once, so one thread beats for all of them."""

    def __init__(self, storage):
        get = getattr(storage, "get_heartbeat_interval", None)
        self.storage, self.interval = storage, get() if get else None
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def add(self, trial) -> None:
        if self.interval:
            self.storage.record_heartbeat(trial._trial_id)
            with self.lock:
                self.ids.add(trial._trial_id)

    def remove(self, trial) -> None:
        with self.lock:
            self.ids.discard(trial._trial_id)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            with self.lock:
                ids = sorted(self.ids)
            for trial_id in ids:
                self.storage.record_heartbeat(trial_id)

    def __enter__(self) -> "Heartbeats":
        if self.interval:
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.interval:
            self.stop.set()
            self.thread.join()


def exit_with_parent() -> None:
    """Workers started by a coordinator die with it (kill -9 included), leaving trials to reap: at
    once on Linux (the kernel's parent-death signal), within a second elsewhere."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
