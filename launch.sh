#!/usr/bin/env bash
# Multi-node wrapper around `accelerate launch`: works out the topology from plain or SLURM variables.
#
#   ./launch.sh [--dry-run] SCRIPT [ARGS...]      e.g. ./launch.sh train/main.py --config configs/demo.yaml
#
# Run it once per node (under SLURM: srun --ntasks-per-node=1 ./launch.sh ...). Each value comes from
# the first source that sets it:
#   nodes          NUM_NODES      | SLURM_NNODES                                        | 1
#   node rank      NODE_RANK      | SLURM_NODEID                                        | 0
#   master address MASTER_ADDR    | first host of `scontrol show hostnames $SLURM_JOB_NODELIST` | 127.0.0.1 (1 node)
#   master port    MASTER_PORT                                                          | 29500
#   GPUs per node  GPUS_PER_NODE  | SLURM_GPUS_ON_NODE | SLURM_GPUS_PER_NODE ([type:]N)  | nvidia-smi -L | 0
# With no GPU each node runs one CPU process. ACCELERATE_CONFIG=path adds --config_file path.
# --dry-run (or LAUNCH_DRY_RUN=1) prints the accelerate command instead of running it.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

count_gpus() {  # GPUs this node may use; 0 when there is no driver
  local n=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}}
  if [[ -n $n ]]; then echo "${n##*:}"; return; fi  # SLURM_GPUS_PER_NODE may read "a100:4"
  { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU ' || true
}

master_addr() {
  if [[ -n ${MASTER_ADDR:-} ]]; then echo "$MASTER_ADDR"; return; fi
  if [[ -n ${SLURM_JOB_NODELIST:-} ]] && command -v scontrol >/dev/null; then
    local hosts  # not `| head -1`: that can kill scontrol with SIGPIPE, fatal under pipefail
    hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST") \
      || die "scontrol could not expand SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST; set MASTER_ADDR"
    echo "${hosts%%$'\n'*}"
    return
  fi
  echo ""
}

is_count() { [[ $1 =~ ^[0-9]+$ ]]; }

dry_run=${LAUNCH_DRY_RUN:-0}
while [[ ${1:-} == -* ]]; do
  case $1 in
    --dry-run) dry_run=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown launcher option $1 (launcher options go before the script; see ./launch.sh --help)" ;;
  esac
done
[[ $# -ge 1 ]] || die "no script given; usage: ./launch.sh [--dry-run] train/main.py --config configs/<recipe>.yaml"

nodes=${NUM_NODES:-${SLURM_NNODES:-1}}
rank=${NODE_RANK:-${SLURM_NODEID:-0}}
port=${MASTER_PORT:-29500}
gpus=$(count_gpus)
addr=$(master_addr)
for pair in "NUM_NODES=$nodes" "NODE_RANK=$rank" "MASTER_PORT=$port" "GPUS_PER_NODE=$gpus"; do
  is_count "${pair#*=}" || die "${pair%%=*} must be a whole number, got '${pair#*=}'"
done
(( nodes >= 1 )) || die "NUM_NODES must be at least 1, got $nodes"
(( rank < nodes )) || die "NODE_RANK $rank is out of range for $nodes nodes (0..$((nodes - 1)))"
if [[ -z $addr ]]; then
  (( nodes == 1 )) || die "MASTER_ADDR is not set; export the address of the rank-0 node (or run under SLURM)"
  addr=127.0.0.1
fi

per_node=$(( gpus > 0 ? gpus : 1 ))  # without GPUs: one CPU process per node
procs=$(( nodes * per_node ))
device=$( (( gpus > 0 )) && echo gpu || echo cpu)
echo "launch: nodes=$nodes node_rank=$rank device=$device procs_per_node=$per_node processes=$procs master=$addr:$port"

# --quiet: a user error in the script is its one `error:` line, not repeated in the launcher's traceback.
cmd=(accelerate launch --quiet --num_machines "$nodes" --machine_rank "$rank" --main_process_ip "$addr"
     --main_process_port "$port" --num_processes "$procs")
# More than one process needs the torchrun-based launcher (--multi_gpu). On CPUs it takes gloo only
# when ACCELERATE_USE_CPU is set (accelerate rejects --cpu together with --multi_gpu).
if (( procs > 1 )); then cmd+=(--multi_gpu); elif [[ $device == cpu ]]; then cmd+=(--cpu); fi
if (( procs > 1 )) && [[ $device == cpu ]]; then cmd=(env ACCELERATE_USE_CPU=true "${cmd[@]}"); fi
if [[ -n ${ACCELERATE_CONFIG:-} ]]; then cmd+=(--config_file "$ACCELERATE_CONFIG"); fi
cmd+=("$@")

if [[ $dry_run == 1 ]]; then
  printf '%q' "${cmd[0]}"; printf ' %q' "${cmd[@]:1}"; echo
  exit 0
fi
command -v accelerate >/dev/null || die "accelerate is not installed; pip install -e . (it is a dependency)"
exec "${cmd[@]}"
