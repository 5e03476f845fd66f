"""Peak resident memory of the prepare stage on a synthetic 60,000 x 784 float32 array.

Runs the real stage script (pipeline/prepare.py) in a fresh process on a .npy file (memory-
mapped) and on an .npz archive of the same array, and prints each peak next to the array's own
size; the target is at most twice the array. The peak includes the interpreter and the libraries
prepare imports (NumPy, scikit-learn for the intrinsic dimension), printed separately.

    .venv/bin/python benchmarks/prepare_memory.py [--rows 60000] [--cols 784]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOUND = 2.0  # peak resident memory / array size


def child_peak_mb(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of one fresh child process. ru_maxrss of RUSAGE_CHILDREN is
    the largest peak of the children waited for so far, so each run gets a process of its own."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", probe, *cmd], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stdout}\n{res.stderr}")
    return int(res.stdout.strip().splitlines()[-1]) / 1024, seconds  # Linux reports KiB


def write_array(folder: Path, rows: int, cols: int) -> tuple[Path, Path]:
    """The same uniform [0, 1) float32 array as .npy and as an (uncompressed) .npz, written in blocks."""
    rng = np.random.default_rng(0)
    npy = folder / "x.npy"
    out = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(rows, cols))
    for start in range(0, rows, 4096):
        out[start : start + 4096] = rng.random((min(4096, rows - start), cols), dtype=np.float32)
    out.flush()
    del out
    npz = folder / "x.npz"
    from latentstudy import npz as npz_mod

    with npz_mod.Writer(npz) as writer, writer.stream("x", (rows, cols), np.float32) as write:
        source = np.load(npy, mmap_mode="r")
        for start in range(0, rows, 4096):
            write(source[start : start + 4096])
    return npy, npz


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=60000)
    p.add_argument("--cols", type=int, default=784)
    args = p.parse_args()
    array_mb = args.rows * args.cols * 4 / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = write_array(tmp, args.rows, args.cols)
        imports = "import latentstudy.data.prepare, sklearn.neighbors"
        base_mb, _ = child_peak_mb([sys.executable, "-c", imports], tmp)
        print(f"array: {args.rows} x {args.cols} float32 = {array_mb:.0f} MB; interpreter and libraries alone: "
              f"{base_mb:.0f} MB")
        worst = 0.0
        for path in files:
            (tmp / "params.yaml").write_text(yaml.safe_dump({"data": {"name": "file", "path": str(path)}}))
            peak, seconds = child_peak_mb([sys.executable, str(ROOT / "pipeline" / "prepare.py"), "--out",
                                           str(tmp / f"prepared-{path.suffix[1:]}")], tmp)
            worst = max(worst, peak / array_mb)
            print(f"prepare from {path.suffix}: peak RSS {peak:.0f} MB = {peak / array_mb:.2f} x the array "
                  f"({peak - base_mb:.0f} MB above the libraries), {seconds:.1f} s")
    print(f"{'within' if worst <= BOUND else 'ABOVE'} the bound of {BOUND:g} x the array's size")
    sys.exit(0 if worst <= BOUND else 1)


if __name__ == "__main__":
    main()
