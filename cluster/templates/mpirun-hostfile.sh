#!/bin/bash
# shardlora with plain mpirun over a hostfile, without a scheduler:
#   cluster/templates/mpirun-hostfile.sh HOSTFILE RANKS RECIPE [section.key=value ...]
# HOSTFILE lists one node per line ("node1 slots=8"; a name given twice counts twice). Every
# node needs the same shardlora binary (SHARDLORA, default: the one on PATH) and a shared
# output.dir. Rank 0 serves the job's store and hands its address out over MPI; set
# SHARDLORA_STORE_BIND to keep it on one interface. Extra mpirun options: MPIRUN_ARGS.
# `kill -USR1` to mpirun makes every rank checkpoint and exit; running the script again continues.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 HOSTFILE RANKS RECIPE [section.key=value ...]" >&2
  exit 2
fi
hostfile=$1 ranks=$2 recipe=$3
shift 3
[ -r "$hostfile" ] || { echo "$0: HOSTFILE: cannot read $hostfile" >&2; exit 2; }
# The variables the ranks on other nodes need, those that are set (mpirun warns of the rest).
forward=()
for name in PATH LD_LIBRARY_PATH OMP_NUM_THREADS SHARDLORA_STORE_BIND; do
  if [ -n "${!name+set}" ]; then forward+=(-x "$name"); fi
done
# MPIRUN_ARGS is split into words on purpose: it holds several options.
# shellcheck disable=SC2086
exec mpirun --hostfile "$hostfile" -np "$ranks" ${MPIRUN_ARGS:-} "${forward[@]}" \
  "${SHARDLORA:-shardlora}" train "$recipe" "$@" --auto-resume
