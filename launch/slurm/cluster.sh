#!/usr/bin/env bash
# A real 2-node SLURM cluster (nodes n1, n2) on this one machine, for tests of sbatch/srun,
# job arrays, requeue and signals.  Debian 12 / Slurm 22.05, run as root, no systemd needed.
#   cluster.sh up      install if needed, start munged + slurmctld + slurmd n1/n2, wait for idle nodes
#   cluster.sh down    cancel jobs, stop all daemons
#   cluster.sh status  sinfo, or "slurm: down"
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF=/etc/slurm/slurm.conf
RUN=/run/slurm
LOG=/var/log/slurm
NODES=(n1 n2)
TIMEOUT=${SLURM_UP_TIMEOUT:-60}

die() { echo "slurm: $*" >&2; exit 1; }
# ps rather than kill -0: a non-root user cannot signal the daemons but can see them, and a
# killed daemon stays a zombie for seconds here (PID 1 reaps late) though it is gone.
pid_alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $st != Z* ]]; }
alive() { [[ -s $1 ]] && pid_alive "$(cat "$1")"; }

daemons_alive() {
  alive /run/munge/munged.pid && alive $RUN/slurmctld.pid || return 1
  local n; for n in "${NODES[@]}"; do alive "$RUN/slurmd-$n.pid" || return 1; done
}

# Nodes are usable when they are idle or already running jobs; anything else (down, drain,
# unk, a trailing '*' for "not responding") means a slurmd has not registered (yet).
nodes_ready() {
  local n state
  for n in "${NODES[@]}"; do
    state=$(sinfo -h -n "$n" -o %t 2>/dev/null | head -n1) || return 1
    [[ $state =~ ^(idle|mix|alloc|comp)$ ]] || { echo "$n ${state:-none}"; return 1; }
  done
}

render_conf() {
  local cpus mem_mb
  cpus=$(nproc)
  # Both "nodes" are the same machine, so each claims (a bit under) all of it. slurmd drains a
  # node whose RealMemory is above what it detects, hence the margin.
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)
  sed -e "s/@CPUS@/$cpus/g" -e "s/@MEM_MB@/$mem_mb/g" "$HERE/slurm.conf.in"
}

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
    command -v sbatch >/dev/null && command -v munged >/dev/null && return 0
  mkdir -p $LOG
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends slurmctld slurmd slurm-client munge; } >$LOG/install.log 2>&1 ||
    die "apt-get install failed; see $LOG/install.log"
}

start_munge() {
  alive /run/munge/munged.pid && return 0
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge /var/lib/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    head -c 1024 /dev/urandom >/etc/munge/munge.key
  fi
  # munged refuses to start unless the key is private to the munge user.
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  runuser -u munge -- munged || die "munged did not start; see /var/log/munge/munged.log"
}

start_slurm() {
  mkdir -p $RUN $LOG /var/spool/slurmctld
  local n; for n in "${NODES[@]}"; do mkdir -p "/var/spool/slurmd/$n"; done
  # Keep the saved state (no -c): with -c slurmctld forgot its jobs and handed their ids out
  # again (seen: a new job got the id of a leftover one, whose slurmstepd still ran, and the
  # node drained with "Duplicate jobid"). Leftover jobs are cancelled instead, just below.
  slurmctld || die "slurmctld did not start; see $LOG/slurmctld.log"
  squeue -h -o %A 2>/dev/null | xargs -r scancel --quiet 2>/dev/null || true
  for n in "${NODES[@]}"; do
    slurmd -N "$n" || die "slurmd $n did not start; see $LOG/slurmd-$n.log"
  done
  # A drain from an earlier run survives restarts; lift it. A node whose config is still wrong
  # drains again when its slurmd registers, and the wait below reports it.
  scontrol update NodeName="$(IFS=,; echo "${NODES[*]}")" State=RESUME >/dev/null 2>&1 || true
}

stop_pids() {  # SIGTERM all at once (each daemon takes 1-2 s to exit), SIGKILL after 10 s
  local f pids=() i
  for f in "$@"; do alive "$f" && pids+=("$(cat "$f")"); rm -f "$f"; done
  (( ${#pids[@]} )) || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for i in $(seq 100); do
    sleep 0.1
    for f in "${pids[@]}"; do pid_alive "$f" && continue 2; done
    return 0
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}

stop_slurm() {  # extra pid files (munged) are stopped along with slurm
  # Cancel jobs through slurm first: slurmstepd (the job's parent) outlives slurmd otherwise.
  local i
  if alive $RUN/slurmctld.pid && [[ -n $(squeue -h -o %A 2>/dev/null) ]]; then
    squeue -h -o %A | xargs -r scancel --quiet 2>/dev/null || true
    for i in $(seq 30); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 0.5; done
  fi
  local n pidfiles=($RUN/slurmctld.pid)
  for n in "${NODES[@]}"; do pidfiles+=("$RUN/slurmd-$n.pid"); done
  stop_pids "${pidfiles[@]}" "$@"
  kill_orphan_steps
}

kill_orphan_steps() {
  # Jobs of a crashed run (slurmctld/slurmd killed) keep running under their slurmstepd, and
  # restarted daemons do not reliably reap them: the node then drains ("Kill task failed",
  # or "Duplicate jobid" when the restarted slurmctld, which lost its last saved job id, hands
  # the same id to a new job). With the daemons stopped every slurmstepd is such an orphan:
  # kill it and the processes under it (by pid).
  local pids
  pids=$(ps -eo pid=,ppid=,comm= | awk '
    $3 == "slurmstepd" { k[$1] = 1 } { parent[$1] = $2 }
    END { do { n = 0; for (p in parent) if (!(p in k) && (parent[p] in k)) { k[p] = 1; n++ } } while (n)
          for (p in k) print p }')
  [[ -z $pids ]] || kill -9 $pids 2>/dev/null || true
}

cmd_up() {
  local conf
  if [[ $EUID -ne 0 ]]; then
    daemons_alive && nodes_ready >/dev/null && { echo "slurm: up (nodes ${NODES[*]})"; return 0; }
    die "not running, and only root can start it (run: sudo $0 up)"
  fi
  install_packages
  conf=$(render_conf)
  if daemons_alive && [[ $conf == "$(cat $CONF 2>/dev/null)" ]] && nodes_ready >/dev/null; then
    echo "slurm: up (nodes ${NODES[*]})"; return 0
  fi
  # Something is missing or the config changed: restart slurm as a whole, it takes seconds.
  stop_slurm
  mkdir -p /etc/slurm && printf '%s\n' "$conf" >$CONF
  start_munge
  munge -n | unmunge >/dev/null 2>&1 || die "munge does not work; see /var/log/munge/munged.log"
  local waited=0 missing
  start_slurm
  until missing=($(nodes_ready)); do
    if (( waited >= TIMEOUT * 2 )); then
      scontrol ping >/dev/null 2>&1 || die "slurmctld did not answer in ${TIMEOUT}s; see $LOG/slurmctld.log"
      die "slurmd ${missing[0]} did not register in ${TIMEOUT}s (state ${missing[1]}); see $LOG/slurmd-${missing[0]}.log"
    fi
    sleep 0.5; waited=$((waited + 1))
  done
  echo "slurm: up (nodes ${NODES[*]})"
}

cmd_down() {
  if [[ $EUID -ne 0 ]]; then
    alive $RUN/slurmctld.pid || alive /run/munge/munged.pid || return 0
    die "only root can stop it"
  fi
  stop_slurm /run/munge/munged.pid
}

cmd_status() {
  if alive $RUN/slurmctld.pid && sinfo 2>/dev/null; then return 0; fi
  echo "slurm: down"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
