#!/usr/bin/env bash
# Start `latentstudy worker` on a list of hosts over ssh, each in the background with its log on
# that host. The coordinator (`dvc repro` with the same OPTUNA_STORAGE / MLFLOW_TRACKING_URI) must
# already be running: it creates the studies the workers join.
#
#   export OPTUNA_STORAGE=postgresql://latentstudy:SECRET@db.internal:5432/optuna
#   export MLFLOW_TRACKING_URI=http://mlflow.internal:5000
#   deploy/ssh-workers.sh digits-1a2b3c4d5e gpu01 gpu02 gpu03
#   deploy/ssh-workers.sh --stop gpu01 gpu02 gpu03          # stop them again
#
# Settings (environment variables of this script):
#   REMOTE_DIR   project checkout on every host (default: latentstudy, relative to the remote home)
#   VENV         virtualenv inside REMOTE_DIR (default: .venv)
#   SYNC_DATA=1  rsync ./data/prepared to every host first (else it must already be there: dvc pull)
#   WORKER_ARGS  extra `latentstudy worker` arguments (default: --device auto --workers-per-device 1)
#   GPUS         CUDA_VISIBLE_DEVICES on the hosts (default: unset, every GPU; "" for CPU only)
#   THREADS      LATENTSTUDY_THREADS: torch threads per CPU worker process (default: cores / workers)
#
# The storage URL carries a password: it travels on ssh's stdin, never on a command line, so it
# shows up in no `ps` listing on either side.
set -euo pipefail

REMOTE_DIR=${REMOTE_DIR:-latentstudy}
VENV=${VENV:-.venv}
WORKER_ARGS=${WORKER_ARGS:---device auto --workers-per-device 1}
LOG=.latentstudy/worker.log
PIDFILE=.latentstudy/worker.pid

usage() { echo "usage: $0 STUDY_PREFIX HOST... | $0 --stop HOST..." >&2; exit 2; }
[ $# -ge 2 ] || usage

if [ "$1" = "--stop" ]; then
  shift
  for host in "$@"; do
    # The worker's process group: the parent and the per-device processes it started.
    ssh -o BatchMode=yes "$host" bash -s <<EOF && echo "$host: stopped" || echo "$host: nothing to stop" >&2
cd $(printf %q "$REMOTE_DIR") && test -f $PIDFILE && kill -TERM -- -\$(cat $PIDFILE) && rm -f $PIDFILE
EOF
  done
  exit 0
fi

study=$1; shift
: "${OPTUNA_STORAGE:?set OPTUNA_STORAGE to the shared storage, e.g. postgresql://user:pass@dbhost:5432/optuna}"
: "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI to the mlflow server, e.g. http://mlflow-host:5000}"
case "$OPTUNA_STORAGE" in
  journal:*|sqlite:*) echo "error: OPTUNA_STORAGE=$OPTUNA_STORAGE is a local file; other hosts need a server (postgresql://...)" >&2; exit 2 ;;
esac
case "$MLFLOW_TRACKING_URI" in
  http://*|https://*) ;;
  *) echo "error: MLFLOW_TRACKING_URI must be an mlflow server (http://...): workers upload checkpoints there" >&2; exit 2 ;;
esac

for host in "$@"; do
  if [ "${SYNC_DATA:-0}" = 1 ]; then
    ssh -o BatchMode=yes "$host" mkdir -p "$REMOTE_DIR/data/prepared"
    rsync -a --delete data/prepared/ "$host:$REMOTE_DIR/data/prepared/"
  fi
  {
    printf 'export OPTUNA_STORAGE=%q MLFLOW_TRACKING_URI=%q\n' "$OPTUNA_STORAGE" "$MLFLOW_TRACKING_URI"
    [ -n "${GPUS+set}" ] && printf 'export CUDA_VISIBLE_DEVICES=%q\n' "$GPUS"
    [ -n "${THREADS:-}" ] && printf 'export LATENTSTUDY_THREADS=%q\n' "$THREADS"
    printf 'cd %q && mkdir -p .latentstudy\n' "$REMOTE_DIR"
    # setsid: a process group of its own (for --stop), detached from the ssh session.
    printf 'setsid %q/bin/latentstudy worker --study %q --data data/prepared --checkpoints .latentstudy/checkpoints %s >%s 2>&1 </dev/null &\n' \
      "$VENV" "$study" "$WORKER_ARGS" "$LOG"
    printf 'echo $! >%s\n' "$PIDFILE"
    printf 'echo "$(hostname): worker pid $(cat %s), log $PWD/%s"\n' "$PIDFILE" "$LOG"
  } | ssh -o BatchMode=yes "$host" bash -s
done
