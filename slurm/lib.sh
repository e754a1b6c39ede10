# shellcheck shell=bash
# Shared by the slurm/*.sbatch scripts: sourced by their batch shell. How preemption and requeue work is in
# slurm/README.md.

EXIT_PREEMPTED=75  # grendel_py.errors.EXIT_PREEMPTED: training stopped on a signal after writing a checkpoint
PYTHON=${PYTHON:-python3}
WARNED=""          # set when this shell got SIGUSR1: the ranks are to checkpoint, and the job to requeue
ENDING=""          # set when it got SIGTERM: SLURM is ending the job (scancel, time limit, preemption)

# train_args [CONFIG.yaml] [ARGS...]: set TRAIN_ARGS to the words after `grendel train`: --auto-resume (so a
# requeued or resubmitted job continues train.out), --config CONFIG when the first argument is a .yaml/.yml
# file name, then the other arguments (key.sub=value overrides, other `grendel train` options).
train_args() {
    TRAIN_ARGS=(--auto-resume)
    if [[ ${1:-} == *.yaml || ${1:-} == *.yml ]]; then
        TRAIN_ARGS+=(--config "$1")
        shift
    fi
    TRAIN_ARGS+=("$@")
}

# threads_per_rank RANKS_PER_TASK: the CPU cores each rank may use (OMP_NUM_THREADS), at least 1.
threads_per_rank() {
    local n=$((${SLURM_CPUS_PER_TASK:-1} / $1))
    echo $((n > 0 ? n : 1))
}

# job_port: a TCP port for this job's rendezvous, RDZV_PORT if set, else 12000 + (16 * job id) mod 20000 (below
# Linux's ephemeral ports; the port grendel_py.parallel.runtime.slurm_port gives the job's step 0).
job_port() {
    echo "${RDZV_PORT:-$((12000 + (16 * SLURM_JOB_ID) % 20000))}"
}

log() {
    echo "grendel-slurm $(date +%T) job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $*"
}

# on_usr1: SIGUSR1 came (sbatch --signal=B:USR1@N before the time limit, or scancel --signal=USR1 --batch):
# every process of the job's steps gets SIGTERM, on which grendel finishes its iteration, writes a checkpoint
# and exits 75. Not srun itself: srun answers SIGTERM by killing its step.
on_usr1() {
    WARNED=1
    log "got SIGUSR1: the ranks checkpoint and stop"
    scancel --signal=TERM "$SLURM_JOB_ID"  # without --batch/--full: the steps' processes, not this shell
}

# on_term: SLURM is ending the job and sends SIGTERM to every process of it (the ranks checkpoint if they
# can); nothing is forwarded (a second SIGTERM would cut torchrun's own shutdown short), and the job is not
# requeued, so that scancel cancels it.
on_term() {
    ENDING=1
    log "got SIGTERM: SLURM is ending the job"
}

# run_step CMD...: run the srun command CMD in the background with the traps set, wait for it (a trapped
# signal interrupts `wait`; the step then still runs), then finish with its exit status.
run_step() {
    local pid status
    trap on_usr1 USR1
    trap on_term TERM
    log "$*"
    "$@" &
    pid=$!
    while true; do
        status=0
        wait "$pid" || status=$?
        if ((status <= 128)) || ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
    done
    finish "$status"
}

# finish STATUS: requeue the job when the step was preempted, else exit with STATUS. Preempted: it exited 75
# (srun passes on the tasks' status), or it failed after SIGUSR1 (torchrun exits 1 when its workers exit 75);
# but not while SLURM ends the job. The requeued job runs this script again; --auto-resume continues the run.
finish() {
    local status=$1
    if [[ -z $ENDING ]] && { ((status == EXIT_PREEMPTED)) || [[ -n $WARNED && $status != 0 ]]; }; then
        log "step stopped (status $status${WARNED:+ after SIGUSR1}): requeueing"
        scontrol requeue "$SLURM_JOB_ID" || { log "requeue refused: submit the same command again"; exit "$status"; }
        exit 0
    fi
    log "step exited with status $status${ENDING:+ as SLURM ends the job (not requeued; the same command continues it)}"
    exit "$status"
}
