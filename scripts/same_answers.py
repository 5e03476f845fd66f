"""The default digits study with one CPU worker, in a temporary folder, from the code of a checkout:
writes its answers and reports/metrics.json to one JSON file, so two checkouts can be compared
byte for byte (`cmp`) after a change meant to keep behaviour. Asserts nothing.

    PYTHONPATH=<checkout>/src LATENTSTUDY_THREADS=1 OMP_NUM_THREADS=1 \
        .venv/bin/python scripts/same_answers.py <checkout> '{"search": {...}}' out.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import yaml


def main() -> None:
    repo, extra, out = Path(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
    sys.path.insert(0, str(repo / "benchmarks"))
    from real_data import merged, run_stages  # the checkout's own stage runner

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = merged({"search": {"cpu_workers": 1, "replicate_sizes": "all"}}, extra)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        run_stages(root)
        rec = json.loads((root / "reports/recommendation.json").read_text())
        metrics = json.loads((root / "reports/metrics.json").read_text())
    answers = {p: (a.get("latent_dim"), a.get("likely_set")) for p, a in rec["answers"].items()}
    out.write_text(json.dumps({"answers": answers, "metrics": metrics}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
