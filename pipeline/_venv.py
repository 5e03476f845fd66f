"""Imported first by every stage script: outside the project's environment (`.venv/bin/dvc repro`
without activating it runs the stages with another `python`), one line says how to run them."""

import importlib.util
import sys

if importlib.util.find_spec("latentstudy") is None:
    print(f"error: {sys.executable} cannot import latentstudy: the stages run in the project's environment; "
          "activate it first (. .venv/bin/activate, then dvc repro), or run make study", file=sys.stderr)
    sys.exit(2)
