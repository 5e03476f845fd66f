"""The names under which the search stores facts in Optuna: written by the worker and the
coordinator, read by the outputs, the reapers and remote workers. One spelling each."""

# Study attributes
PLAN = "plan"  # the Plan as JSON, so a worker anywhere can join with the prefix alone
LATENT_DIM = "latent_dim"
ARM = "arm"
PHASE = "phase"  # grid | added | replicate
REASON = "reason"  # why the search added this size (or what a replicate unit is)
EXTRA_TRIALS = "extra_trials"  # [trials search/budget.py added to the unit's budget (0: none), started at most]

# Trial attributes: where it ran (liveness), what it cost and what it reached
HOST = "host"
PID = "pid"  # set last of the three process facts: a trial with a pid has all of them
PID_STARTED = "pid_started"
DEVICE = "device"
WORKER = "worker"
MLFLOW_RUN_ID = "mlflow_run_id"
SEED = "seed"  # the training seed; a trial enqueued with one (a replicate) keeps it
DATA_ORDER = "data_order"  # [seed, first epoch] of its stack's minibatch order: retraining replays it
RETRY_OF = "retry_of"  # the number of the lost trial this one retries
REPLICATE_OF = "replicate_of"  # the grid or added trial whose configuration this one retrains
INIT_FROM = "init_from"  # an added size's first trial: the neighbours whose best parameters it starts from
METRICS = "metrics"  # validation values at the best epoch (or the last, when pruned)
EPOCHS_RUN = "epochs_run"
BEST_EPOCH = "best_epoch"
STILL_IMPROVING = "still_improving"  # complete at the epoch ceiling while still improving: undertrained
SECONDS = "seconds"
N_PARAMS = "n_params"
FAIL_REASON = "fail_reason"
CHECKPOINT = "checkpoint"
