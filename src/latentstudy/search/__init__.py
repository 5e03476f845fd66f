"""The search: Optuna tunes beta and the learning rate at every latent size, on every device.

Rooms by process role: plan (studies, budgets, seeds), keys (the names of stored facts),
store (storage and liveness), journal (the one-host journal file, safe against torn writes),
worker (trains trials), coordinator (the stage's process), runs (the MLflow runs, kept in step
with the storage), weights (the best trials' checkpoints, retrained when lost), outputs (models
and tables written from the storage).
"""
