"""Faults of the disk under the search's stores: a damaged checkpoint, a full disk, a read-only
place. Each ends in one line naming the file and what to do; no finished trial is lost, and the
rerun after the fix finishes.

The disk faults are made in the stage's processes by tests/faultinject/sitecustomize.py (CI runs
as root, which writes through chmod, and cannot mount a small tmpfs): a Python write that does not
fit raises ENOSPC, and SQLite itself refuses to grow or to write MLflow's store.
"""

from __future__ import annotations

from conftest import ROOT
from test_faults import (  # noqa: F401  (prepared, project: fixtures)
    assert_ok,
    default_tracking,
    finished,
    lines_with,
    prepared,
    project,
    rerun,
    search_in_process,
    set_search,
)

INJECT = {"PYTHONPATH": f"{ROOT / 'tests' / 'faultinject'}"}


def checkpoints(project) -> list:
    return sorted((project / ".latentstudy" / "checkpoints").rglob("trial-*.pt"))


def assert_fault_line(res, *fragments: str) -> str:
    """Exit status 2, no traceback, and an `error:` line holding every fragment (a worker's line
    may be followed by the coordinator's, which says the workers stopped)."""
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = lines_with(res.stderr, "error: ")
    assert errors and all(fragment in errors[0] for fragment in fragments), errors
    return errors[0]


def test_a_damaged_checkpoint_in_the_store_is_a_missing_one(project, cpu_threads):
    """Restored from its MLflow run here; retrained from its recorded seed when MLflow has no copy
    either, as a deleted one is (test_faults.py)."""
    search_in_process(project, default_tracking(project))
    before = finished(project)
    garbage, truncated = checkpoints(project)[:2]
    garbage.write_bytes(b"not a checkpoint")
    truncated.write_bytes(truncated.read_bytes()[:100])

    out = assert_ok(rerun(project))
    for path in (garbage, truncated):
        [line] = lines_with(out, f"{path}: not a readable checkpoint")
        assert line.startswith("[search] ") and "restored from MLflow or retrained" in line
        assert (path.parent / f"{path.name}.damaged").is_file()  # the next run sees a missing file
    assert not lines_with(out, "lost")
    assert finished(project) == before


def test_a_full_disk_under_the_journal_is_one_line_and_the_rerun_finishes(project, cpu_threads):
    search_in_process(project, None)
    before = finished(project)
    store = project / ".latentstudy"
    used = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    set_search(project, trials_per_dim=3)  # one more trial: its records and checkpoint do not fit

    res = rerun(project, "--no-tracking", env={**INJECT, "LATENTSTUDY_TEST_DISK": f"{store}:{used + 2048}"})
    assert_fault_line(res, f"{store}", "no space left on its disk", "df -h", "finished trials are kept")
    assert {k: v for k, v in finished(project).items() if k in before} == before

    assert_ok(rerun(project, "--no-tracking"))  # space freed
    after = finished(project)
    assert {k: after[k] for k in before} == before and len(after) == len(before) + 1


def test_a_full_then_a_read_only_mlflow_store_is_one_line_and_the_rerun_finishes(project):
    db = project / "mlflow.db"
    res = rerun(project, env={**INJECT, "LATENTSTUDY_TEST_SQLITE": "full"})  # MLflow's tables do not fit
    assert_fault_line(res, f"{db}: no space left on its disk", f"df -h {project}")
    assert not (project / "models/search").exists()
    assert_ok(rerun(project))
    before = finished(project)

    res = rerun(project, env={**INJECT, "LATENTSTUDY_TEST_SQLITE": "readonly"})
    assert_fault_line(res, f"{db}: cannot be written", f"make {project} writable")
    assert finished(project) == before
    assert_ok(rerun(project))
    assert finished(project) == before


def test_a_read_only_store_folder_is_one_line(project):
    store = project / ".latentstudy"
    res = rerun(project, "--no-tracking", env={**INJECT, "LATENTSTUDY_TEST_READONLY": str(project)})
    assert_fault_line(res, "cannot be written", f"make {project}", "writable")
    assert not store.exists()
