"""The search: Optuna tunes beta and the learning rate at every latent size, on every device.

Rooms by process role: plan (studies, budgets, seeds), keys (the names of stored facts),
store (storage and liveness), worker (trains trials), coordinator (the stage's process),
outputs (models and tables written from the storage).
"""
