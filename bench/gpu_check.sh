#!/usr/bin/env bash
# GPU validation of grendel_py in one command, for the lent one-GPU machine (planned for under 10 minutes;
# every step has its own time limit, so a hung step cannot eat the lease):
#
#   bash bench/gpu_check.sh [--out DIR] [--wheels DIR] [--fox DIR] [--only a,b]   # on the GPU machine
#   bash bench/gpu_check.sh --dry-run [--out DIR] [--plant a,b]   # anywhere: the CPU-possible parts (CI runs this)
#   bash bench/gpu_check.sh --fetch-wheels [--wheels DIR]   # here, with PyPI: fill DIR (default .whl) with the
#                                                           # wheels the GPU machine lacks (Python 3.12, x86-64)
#
# The GPU machine has torch (CUDA), CuPy, numpy, scipy, pillow, pyyaml, tqdm, tensorboard and pytest but no
# network; a module it lacks (plyfile) is installed from the wheels folder (carry it: run --carry .whl) into a
# temporary site folder. The project itself runs from the checkout (PYTHONPATH), not installed.
#
# Steps, each recorded with its status, seconds and result in DIR/gpu_check.json (default DIR: $OUT when
# set, else bench/results/gpu_check; rewritten after every phase, so a run cut short still reports what it
# finished), the full log in DIR/gpu_check.log. Every step but facts, wheels and synth states what it expects
# (its result's "expected") and is `failed` when its result misses it ("ok": false), when it fails or when it
# runs past its time limit:
#   facts    GPU, driver, Python, torch, CUDA, CuPy; the commit, whether the tree differed from it, and a
#            hash of the GPU path's sources (bench/provenance.py), which every figure is to be quoted with
#   wheels   which required modules were missing and where they came from
#   gsplat_build   gsplat's CUDA extension compiled for this GPU (bench/peer.py build), in the background
#            beside the correctness and training steps (8 of the 16 cores), for the step's side by side;
#            expected: it loads
#   synth    the demo scene and the W-equivalence test's scene (on the CPU, alone: beside the GPU steps it
#            ran past 60 s)
#   -- correctness, run side by side (their times mean nothing):
#   pytest   pytest -m gpu (the kernels and the spec on CUDA against the spec on the CPU); expected: no
#            failure, no skip
#   racecheck, memcheck   compute-sanitizer on the kernel tests of one scene through CuPy: shared-memory
#            races and out-of-bounds or misaligned accesses, which the CPU's host runtime cannot see;
#            expected: none (exit status)
#   parity   cupy vs torch on the GPU at 1920x1080, 200k Gaussians: images, bins, every gradient; expected:
#            bins equal, each value as close to the float64 spec as float32 rounding explains (gpu_check.py)
#   -- training end to end, side by side (their seconds are those of two trainings sharing the machine):
#   demo     the demo scene trained on the GPU with cupy, one rank; expected: test PSNR within 0.2 dB of the
#            CPU reference (bench/results/demo_cpu.json)
#   share    the W-equivalence job of tests/test_dist_train.py on one rank and on two ranks sharing the GPU
#            over gloo (dist.share_gpus); expected: the one-rank model, Gaussian by Gaussian, within that
#            test's bounds (tests/model_match.py)
#   -- timings, one at a time:
#   step     1M Gaussians at 1080p, batch 1 and 4: seconds per iteration (and Adam's), kernel share, peak memory and bytes
#            per Gaussian, host syncs; the profiler's busiest GPU kernels in the log; and gsplat 1.5.3's
#            step side by side on the same scene, cameras and photos (bench/peer.py: its rasterization(), our
#            loss, torch's fused Adam), with the ratio of the two; expected: host syncs within the kernel path's
#            budget on the CPU (tests/launch_budget.json), gsplat seeing the scene as we do (its torch reference
#            projection against our spec) and drawing our image (PSNR >= 40 dB)
#   calibrate   the GPU's cost profile for `grendel plan` (bench/calibrate.py, the cupy step at up to 2M
#            Gaussians at 1080p), written as DIR/profile_gpu.json; expected: every stage fitted
#   fox      configs/fox.yaml trained on the GPU (cupy, one rank) from the fox photos in --fox DIR (default
#            .fox; skipped when absent: carry a copy of ../shared/data/fox there); expected: test PSNR within
#            0.2 dB of the CPU reference (bench/results/fox_cpu.json)
# --only a,b runs only the named steps of those (facts and wheels always run). --dry-run runs facts, wheels
# (lookup only), synth, and on the CPU at tiny sizes with the torch backend standing in for the kernels:
# parity, a short demo (against its own CPU reference, bench/results/demo_cpu_dry.json), share, step and
# calibrate; the
# GPU-only steps are recorded as skipped. That is what CI can check of this script without a GPU. --plant
# a,b (with --dry-run) plants in each named step of demo, share, parity and step a difference its expectation
# must catch (a reference 1 dB off; another seed on two ranks; a colour off by 1e-3; a budget of 0 syncs and
# gsplat given the quaternions in the wrong order), so
# that tests see every expectation fail. Exit status: 0 when every step that ran passed, 1 otherwise, 2 for
# bad arguments.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() {
    sed -n '2,9p' "$0" >&2
    exit 2
}

OUT_DIR=${OUT:-$ROOT/bench/results/gpu_check}
WHEELS=$ROOT/.whl
FOX=$ROOT/.fox
ONLY=
PLANT=,
MODE=gpu
while (($#)); do
    case $1 in
        --out) OUT_DIR=${2:?--out needs a folder}; shift 2 ;;
        --wheels) WHEELS=${2:?--wheels needs a folder}; shift 2 ;;
        --fox) FOX=${2:?--fox needs a folder}; shift 2 ;;
        --only) ONLY=,${2:?--only needs step names},; shift 2 ;;
        --plant) PLANT=,${2:?--plant needs step names},; shift 2 ;;
        --dry-run) MODE=dry; shift ;;
        --fetch-wheels) MODE=fetch; shift ;;
        -h | --help) usage ;;
        *) echo "gpu_check: unknown argument '$1'" >&2; usage ;;
    esac
done

if [[ $PLANT != , && $MODE != dry ]]; then
    echo "gpu_check: --plant is for --dry-run only" >&2
    exit 2
fi

PY=${PYTHON:-python3}
# import name -> PyPI name, for what the project needs at run time and pytest (the GPU image lacks some)
REQUIRED=(torch:torch numpy:numpy scipy:scipy PIL:pillow plyfile:plyfile yaml:pyyaml tqdm:tqdm
    tensorboard:tensorboard pytest:pytest gsplat:gsplat)

if [[ $MODE == fetch ]]; then
    mkdir -p "$WHEELS"
    for pair in "${REQUIRED[@]}"; do
        name=${pair#*:}
        case $name in torch | numpy | scipy | pillow | tensorboard | pytest | pyyaml | tqdm) continue ;; esac  # on the GPU image
        version=$("$PY" -c "from importlib.metadata import version; print(version('$name'))" 2>/dev/null) || {
            echo "gpu_check: $name is not installed here; install the project first (bash scripts/test.sh)" >&2; exit 1; }
        "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$WHEELS" "$name==$version" || exit 1
    done
    ls "$WHEELS"
    echo "gpu_check: carry $(realpath --relative-to="$ROOT" "$WHEELS") to the GPU machine (device run: carry=[\".whl\"])"
    exit 0
fi

mkdir -p "$OUT_DIR" || exit 2
LOG=$OUT_DIR/gpu_check.log
STEPS=$(mktemp -d)
WORK=$(mktemp -d)
trap 'rm -rf "$STEPS" "$WORK"' EXIT
: >"$LOG"
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
ORDER="facts wheels synth gsplat_build pytest racecheck memcheck parity demo share step calibrate fox"

# planted NAME: whether --plant names the step
planted() {
    [[ $PLANT == *",$1,"* ]]
}

# record NAME STATUS SECONDS [JSON]: one step's entry (JSON: its result, an object; default null).
record() {
    "$PY" - "$STEPS/$1.json" "$1" "$2" "$3" "${4:-null}" <<'PY'
import json, sys
path, name, status, seconds, result = sys.argv[1:]
json.dump({"step": name, "status": status, "seconds": round(float(seconds), 1), "result": json.loads(result)}, open(path, "w"))
PY
    echo "gpu_check: $1: $2 ($3 s)"
}

# want NAME: whether the step runs (--only, when given, names it; facts always runs)
want() {
    [[ -z $ONLY || $1 == facts || $ONLY == *",$1,"* ]]
}

# step NAME LIMIT CMD...: run CMD with a time limit, its output in the step's own log (steps may run side by
# side; the report joins the logs in order); its last stdout line, when it is a JSON object, is its result.
step() {
    local name=$1 limit=$2 start=$SECONDS status=passed out code
    shift 2
    if ! want "$name"; then
        record "$name" skipped 0 '{"reason": "not in --only"}'
        return 0
    fi
    echo "\$ $*" >"$WORK/$name.log"
    timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.out" 2>>"$WORK/$name.log"
    code=$?
    cat "$WORK/$name.out" >>"$WORK/$name.log"
    out=$(tail -n 1 "$WORK/$name.out")
    case $code in
        0) ;;
        124 | 137) status=failed; out="{\"error\": \"over its limit of $limit s\"}" ;;
        *) status=failed ;;
    esac
    [[ $out == \{* ]] || out="{\"last_line\": $("$PY" -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$out")}"
    record "$name" "$status" $((SECONDS - start)) "$out"
}

skip() {
    record "$1" skipped 0 "{\"reason\": \"$2\"}"
}

# the modules the GPU machine may lack, installed from $WHEELS into a temporary site folder
wheels() {
    local start=$SECONDS missing=() from=() pair module name wheel
    for pair in "${REQUIRED[@]}"; do
        module=${pair%%:*} name=${pair#*:}
        "$PY" -c "import $module" 2>/dev/null && continue
        missing+=("$name")
        wheel=$(ls "$WHEELS"/"${name//-/_}"-*.whl "$WHEELS"/"$name"-*.whl 2>/dev/null | head -n 1)
        from+=("${wheel:-none}")
    done
    local json
    json=$("$PY" -c 'import json, sys; n = len(sys.argv) // 2; print(json.dumps({"missing": sys.argv[1:n + 1], "wheels": sys.argv[n + 1:]}))' \
        "${missing[@]}" "${from[@]}")
    if ((${#missing[@]} == 0)); then
        record wheels passed $((SECONDS - start)) "$json"
        return 0
    fi
    if [[ " ${from[*]} " == *" none "* ]]; then
        echo "gpu_check: no wheel in $WHEELS for: ${missing[*]}; fill it here with: bash bench/gpu_check.sh --fetch-wheels" | tee "$WORK/wheels.log"
        record wheels failed $((SECONDS - start)) "$json"
        return 1
    fi
    if [[ $MODE == dry ]]; then
        record wheels passed $((SECONDS - start)) "$json"  # lookup only: nothing installed on a dry run
        return 0
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "${from[@]}" >"$WORK/wheels.log" 2>&1 || {
        record wheels failed $((SECONDS - start)) "$json"; return 1; }
    export PYTHONPATH=$PYTHONPATH:$WORK/site
    record wheels passed $((SECONDS - start)) "$json"
}

# train NAME LIMIT REFERENCE LAUNCH...: a training run (LAUNCH, to which train.out is added); its result is
# gpu_check.py trained's: metrics.json's numbers and, with REFERENCE (a CPU run's JSON; - for none), the
# expectation of a test PSNR within 0.2 dB of it.
train() {
    local name=$1 limit=$2 reference=$3 run=$WORK/$1
    shift 3
    step "$name" "$limit" bash -c '
        run=$1 reference=$2; shift 2
        "$@" train.out="$run" >&2 || exit 1
        if [[ $reference == - ]]; then exec "$PY" bench/gpu_check.py trained "$run"; fi
        exec "$PY" bench/gpu_check.py trained "$run" --reference "$reference"
    ' _ "$run" "$reference" "$@"
}

# report: DIR/gpu_check.json from the steps recorded so far and DIR/gpu_check.log from their logs (each
# written whole or not at all).
report() {
    "$PY" - "$STEPS" "$OUT_DIR/gpu_check.json" "$MODE" "$ORDER" <<'PY'
import json, pathlib, sys
steps, out, mode, order = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split()
entries = [json.loads((steps / f"{n}.json").read_text()) for n in order if (steps / f"{n}.json").exists()]
report = {"mode": mode, "failed": [e["step"] for e in entries if e["status"] == "failed"], "steps": entries}
tmp = pathlib.Path(out).with_suffix(".json.tmp")
tmp.write_text(json.dumps(report, indent=1) + "\n")
tmp.replace(out)
PY
    for name in $ORDER; do
        if [[ -f $WORK/$name.log ]]; then echo "=== $name"; cat "$WORK/$name.log"; fi
    done >"$LOG.tmp" && mv "$LOG.tmp" "$LOG"
}

export PY ROOT
DEMO_CPU=$ROOT/bench/results/demo_cpu.json
DEMO_CPU_DRY=$ROOT/bench/results/demo_cpu_dry.json
FOX_CPU=$ROOT/bench/results/fox_cpu.json
# the demo's scene, and tests/test_dist_train.py's (seed 2) for share
SYNTH='"$PY" -m grendel_py synth "$1/scene" --preset object --seed 0 && "$PY" -m grendel_py synth "$1/scene2" --preset object --seed 2'
step facts 60 "$PY" bench/gpu_check.py facts
wheels || { report; exit 1; }  # nothing else can run without its modules
if [[ $MODE == dry ]]; then
    for name in gsplat_build pytest racecheck memcheck; do skip $name "dry run: no GPU"; done
    step synth 120 bash -c "$SYNTH" _ "$WORK"
    step parity 120 "$PY" bench/gpu_check.py parity --device cpu --candidate torch --n 2000 --width 96 --height 64 \
        $(planted parity && echo --plant)
    reference=$DEMO_CPU_DRY
    if planted demo; then  # the reference 1 dB off
        reference=$WORK/demo_reference.json
        "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); r["test_psnr"] += 1; json.dump(r, open(sys.argv[2], "w"))' \
            "$DEMO_CPU_DRY" "$reference"
    fi
    train demo 300 "$reference" "$PY" -m grendel_py train --config configs/demo.yaml "data.path=$WORK/scene" train.images=40 \
        train.eval_every=0 train.checkpoint_every=0 train.device=cpu render.backend=torch
    step share 300 "$PY" bench/gpu_check.py share "$WORK/scene2" "$WORK/share" --device cpu --backend torch \
        $(planted share && echo --plant)
    step step 300 "$PY" bench/gpu_check.py step --device cpu --n 2000 --width 96 --height 64 --batch 1,2 --iterations 2 \
        $(planted step && echo --sync-budget 0 --plant-peer)
    step calibrate 300 "$PY" bench/calibrate.py --quick --iterations 2 --out "$WORK/profile.json"
    skip fox "dry run: no GPU"
else
    step synth 120 bash -c "$SYNTH" _ "$WORK"  # alone: CPU-bound
    # gsplat's extension, built once into $WORK for the step's side by side, on half the cores meanwhile
    export TORCH_EXTENSIONS_DIR=$WORK/torch_extensions TORCH_CUDA_ARCH_LIST=9.0
    MAX_JOBS=8 step gsplat_build 420 "$PY" bench/gpu_check.py gsplat-build &
    build=$!
    # correctness, side by side
    jobs=()
    step pytest 120 "$PY" bench/gpu_check.py tests -q -m gpu tests &
    jobs+=($!)
    for tool in racecheck memcheck; do
        step $tool 120 compute-sanitizer --tool $tool --error-exitcode 1 "$PY" bench/gpu_check.py tests -q \
            tests/test_kernels.py -k "cupy and random and (rasterize_matches_spec or binning_matches_spec)" &
        jobs+=($!)
    done
    step parity 150 "$PY" bench/gpu_check.py parity &
    jobs+=($!)
    wait "${jobs[@]}"
    report
    # training end to end, side by side
    jobs=()
    train demo 120 "$DEMO_CPU" "$PY" -m grendel_py train --config configs/demo.yaml "data.path=$WORK/scene" train.device=cuda \
        render.backend=cupy &
    jobs+=($!)
    step share 140 "$PY" bench/gpu_check.py share "$WORK/scene2" "$WORK/share" --device cuda --backend cupy &
    jobs+=($!)
    wait "${jobs[@]}"
    report
    wait $build  # the side by side needs gsplat's extension
    report
    # timings, one at a time
    step step 120 "$PY" bench/gpu_check.py step
    report
    step calibrate 150 "$PY" bench/calibrate.py --device cuda --backend cupy --iterations 2 \
        --out "$OUT_DIR/profile_gpu.json" --samples "$OUT_DIR/calibrate_samples.json"
    report
    if [[ -f $FOX/transforms.json ]]; then
        train fox 140 "$FOX_CPU" "$PY" -m grendel_py train --config configs/fox.yaml "data.path=$FOX" train.device=cuda render.backend=cupy
    else
        skip fox "no fox photos in $FOX (carry a copy of ../shared/data/fox)"
    fi
fi

report
echo "gpu_check: wrote $OUT_DIR/gpu_check.json ($MODE)"
"$PY" -c 'import json, sys; sys.exit(bool(json.load(open(sys.argv[1]))["failed"]))' "$OUT_DIR/gpu_check.json"
