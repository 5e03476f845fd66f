"""latentstudy: how big should my latent space be? (DVC + Optuna + MLflow + PyTorch).

latentstudy.load(purpose="generation") gives the chosen model, working on raw rows;
latentstudy.answers() the answers with their intervals (both in latentstudy.api).
"""

__version__ = "0.1.0"
API = ("load", "answers")


def __getattr__(name: str):
    # Imported on first use, by name: no stage touches these, and the stage scripts import this
    # package first, so neither torch nor the API module (nor a dvc.yaml dep on it) comes with it.
    if name in API:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.api"), name)
    raise AttributeError(f"module 'latentstudy' has no attribute {name!r}")
