"""latentstudy: how big should my latent space be? (DVC + Optuna + MLflow + PyTorch)."""

__version__ = "0.1.0"
