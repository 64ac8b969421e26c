#!/usr/bin/env bash
# The H100 battery: one call builds, tests and times. Stages by name (default: all):
#   (tmpfsrun first, for runs that should see CRIU's kernel cache: it changes /run for the call)
#   bash benchmarks/h100/battery.sh [gputests] [optimizer] [restore8] [restore16] [ckpt] [trace] [tui]
# Logs go to $OUT (device tool) or /tmp/rp-out.
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/rp-out}; mkdir -p "$out"
source benchmarks/h100/env.sh
export PYTHONUNBUFFERED=1
stages=${*:-gputests optimizer restore8 restore16 ckpt}
for stage in $stages; do
  echo "=== $stage $(date +%T)"
  case $stage in
    doctor)    restoreprof doctor 2>&1 | tee "$out/doctor.txt" ;;
    gputests)  rp_python -m pytest -q -m gpu tests/gpu tests/integration/test_offload_cycles.py -p no:cacheprovider 2>&1 | tail -25 | tee "$out/gputests.txt" ;;
    gpuquick)  rp_python -m pytest -q -m gpu tests/gpu -p no:cacheprovider 2>&1 | tail -5 | tee "$out/gpuquick.txt" ;;
    sweep)     rp_python benchmarks/sweep_reload.py --gib 8 --chunks 2 4 8 --threads 8 16 --streams 4 2>&1 | tee "$out/sweep.txt" ;;
    optimizer) rp_python benchmarks/bench_optimizer.py --gib 8 2>&1 | tee "$out/optimizer.txt" ;;
    restore8)  rp_python benchmarks/bench_gpu_restore.py --gib 8 --cold --json "$out/restore8.json" 2>&1 | grep -v '^{' | tee "$out/restore8.txt" ;;
    restore16) rp_python benchmarks/bench_gpu_restore.py --gib 16 --cold --json "$out/restore16.json" 2>&1 | grep -v '^{' | tee "$out/restore16.txt" ;;
    ckpt)      rp_python benchmarks/bench_checkpoint.py --gpu-gib 4 --procs 4 --json "$out/tree4.json" 2>&1 | tee "$out/tree4.txt" ;;
    calibrate) restoreprof calibrate -D /tmp 2>&1 | tee "$out/calibrate.txt" ;;
    trace)     # the driver's restore of 8 GiB, the optimized one, and a PyTorch program, traced
               rm -rf /tmp/rp-t; mkdir -p /tmp/rp-t
               for kind in plain optimized; do
                 rp_python benchmarks/h100/make_checkpoint.py /tmp/rp-t/$kind --gpu-gib 8 \
                   $([ $kind = optimized ] && echo --optimized)
                 restoreprof trace --restore /tmp/rp-t/$kind -o /tmp/rp-t/$kind-trace 2>&1 | tee "$out/trace-$kind.txt"
                 kill -9 $(python3 -c "import json;print(json.load(open('/tmp/rp-t/$kind/restoreprof.json'))['root_pid'])") 2>/dev/null
               done
               restoreprof trace -o /tmp/rp-t/torch -- python3 benchmarks/h100/torch_copy.py 2>&1 | tee "$out/trace-torch.txt"
               cp /tmp/rp-t/optimized-trace/report.json "$out/report-optimized.json" ;;
    tui)       rm -rf /tmp/rp-tui; rp_python benchmarks/h100/make_checkpoint.py /tmp/rp-tui/ckpt --gpu-gib 8 --optimized
               rp_python benchmarks/h100/tui_capture.py -D /tmp/rp-tui/ckpt --interval 0.3 2>&1 | tail -90 | tee "$out/tui.txt"
               kill -9 $(python3 -c "import json;print(json.load(open('/tmp/rp-tui/ckpt/restoreprof.json'))['root_pid'])") 2>/dev/null ;;
    overhead)  rp_python benchmarks/bench_trace_overhead.py --gpu-gib 8 --runs 2 2>&1 | tee "$out/overhead.txt" ;;
    tuner)     rp_python benchmarks/bench_tuner.py --budget 12 --repeat 3 --warm-cache 2>&1 | tail -40 | tee "$out/tuner.txt" ;;
    demo)      restoreprof demo -o /tmp/rp-demo 2>&1 | tail -60 | tee "$out/demo.txt" ;;
    remap)     rp_python benchmarks/h100/gpu_remap.py --gib 2 2>&1 | tee "$out/remap.txt"
               rp_python benchmarks/h100/gpu_remap.py --gib 2 --optimized 2>&1 | tee -a "$out/remap.txt" ;;
    imagecheck) rp_python benchmarks/bench_image_check.py --mib 700 --segments 2 8 32 --threads 8 16 2>&1 | tee "$out/imagecheck.txt" ;;
    sweepfine) rp_python benchmarks/sweep_reload.py --gib 8 --chunks 1 2 --threads 12 16 24 --streams 4 8 2>&1 | tee "$out/sweepfine.txt" ;;
    engine)    rp_python benchmarks/bench_optimizer.py --gib 8 --only b d --repeat 5 2>&1 | tee "$out/engine.txt" ;;
    restore8o) rp_python benchmarks/bench_gpu_restore.py --gib 8 --modes reload preload --repeat 3 --json "$out/restore8o.json" 2>&1 | grep -v '^{' | tee "$out/restore8o.txt" ;;
    overhead1g) rp_python benchmarks/bench_trace_overhead.py --mib 1024 --runs 15 2>&1 | tee "$out/overhead1g.txt" ;;
    criulog)   # CRIU's own logs of an optimized 8 GiB checkpoint and restore, for where its time goes
               rm -rf /tmp/rp-cl /tmp/rp-cl.state
               rp_python benchmarks/h100/make_checkpoint.py /tmp/rp-cl --gpu-gib 8 --optimized
               restoreprof restore -D /tmp/rp-cl --json > "$out/criulog-restore.json"
               cp /tmp/rp-cl/criu-restore.log /tmp/rp-cl/criu-dump.log "$out/"
               kill -9 $(python3 -c "import json;print(json.load(open('/tmp/rp-cl/restoreprof.json'))['root_pid'])") 2>/dev/null ;;
    warmlimit) # issue 14: 16 GB Llama-shaped bf16, plain vs pool (page cache) vs hot snapshot, 5 runs each
               # (WARMLIMIT_ARGS replaces the counts, e.g. "--repeat 3 --plain-repeat 0 --no-trace")
               RP_TIMELINE=1 rp_python benchmarks/bench_warm_limit.py ${WARMLIMIT_ARGS:---repeat 5 --plain-repeat 2} \
                 --json "$out/warmlimit.json" 2>&1 | tee "$out/warmlimit.txt" ;;
    helddiag)  # the driver's restore on its held restore thread (experimental), 2 layers, one
               # restore; a hang prints every thread's state and the pool's Python stacks
               RESTOREPROF_HELD_DRIVER_RESTORE=1 timeout 150 bash -c 'rp_python benchmarks/bench_warm_limit.py \
                 --layers 2 --repeat 1 --plain-repeat 0 --no-trace --restore-timeout 30 \
                 --work /tmp/rp-helddiag' 2>&1 | tee "$out/helddiag.txt" ;;
    ownvenv)   # restoreprof in an environment of its own, as `pip install` into a venv (or pipx)
               # puts it: its command's interpreter starts without the program's packages (this
               # machine's torch venv runs a 49 ms .pth hook at every start). Its dependencies
               # (cuda-python, numpy, nvidia-ml-py) come from torch's venv by path alone (no
               # network here, no .pth of that venv run): bench_warm_limit --client venv=...
               rm -rf /tmp/rp-venv; python3 -m venv /tmp/rp-venv || python3 -m venv --without-pip /tmp/rp-venv
               # (PYTHONPATH unset: pip would take the copy in /tmp/rp-pkg for this one, installed)
               ( unset PYTHONPATH; /tmp/rp-venv/bin/python -m pip install -q --no-deps --no-index /tmp/rp-wheel/restoreprof-*.whl \
                 || python3 -m pip --python /tmp/rp-venv/bin/python install -q --no-deps --no-index /tmp/rp-wheel/restoreprof-*.whl )
               python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
                 > "$(/tmp/rp-venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/rp-deps.pth"
               ls "$(/tmp/rp-venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" | tee "$out/ownvenv.txt"
               for cmd in "python3 -m restoreprof" /tmp/rp-venv/bin/restoreprof; do s=$(date +%s%N)
                 for i in $(seq 10); do $cmd --version >/dev/null; done
                 echo "$cmd --version: $(( ($(date +%s%N) - s) / 10000000 )) ms each"; done | tee -a "$out/ownvenv.txt" ;;
    before)    # restoreprof as it was before a change, for A/B runs side by side in one call: the
               # tree with the files under $BEFORE (default .before/, paths as in the repository,
               # e.g. .before/src/restoreprof/optimizer/shim/engine.c from `git show REV:PATH`)
               # in place of the current ones, installed to /tmp/rp-before; run a bench with it by
               # PYTHONPATH=/tmp/rp-before:$PYTHONPATH
               before=${BEFORE:-.before}; rm -rf /tmp/rp-before-tree /tmp/rp-before /tmp/rp-before-wheel
               mkdir /tmp/rp-before-tree
               tar -C . --exclude=./.h100 --exclude=./.before --exclude=./.venv -cf - . | tar -C /tmp/rp-before-tree -xf -
               cp -a "$before/." /tmp/rp-before-tree/
               # nothing built from the current files: every library is built again from the tree
               find /tmp/rp-before-tree \( -name '*.so' -o -name build -o -name '*.egg-info' \) -prune -exec rm -rf {} +
               ( cd /tmp/rp-before-tree && python3 -m pip wheel -q --no-deps --no-build-isolation --no-index -w /tmp/rp-before-wheel . &&
                 python3 -m pip install -q --no-deps --no-index --target /tmp/rp-before /tmp/rp-before-wheel/restoreprof-*.whl ) \
                 > "$out/before.txt" 2>&1 && echo "before: /tmp/rp-before from $(cd "$before" && find . -type f | tr '\n' ' ')" | tee -a "$out/before.txt" ;;
    pystart)   # the restore command's own start: the interpreter, site, and restoreprof's imports
               for flags in "" "-I -S"; do s=$(date +%s%N); for i in $(seq 20); do python3 $flags -c pass; done
                 echo "python3 $flags -c pass: $(( ($(date +%s%N) - s) / 20000 )) us each"; done | tee "$out/pystart.txt"
               s=$(date +%s%N); for i in $(seq 20); do python3 -c "import restoreprof.cli, restoreprof.commands.pooled_restore, restoreprof.system.warm_socket"; done
               echo "python3 + the restore client's imports: $(( ($(date +%s%N) - s) / 20000 )) us each" | tee -a "$out/pystart.txt"
               python3 -X importtime -c "import restoreprof.cli, restoreprof.commands.pooled_restore, restoreprof.system.warm_socket" 2>&1 \
                 | sort -t'|' -k2 -n | tail -25 | tee -a "$out/pystart.txt" ;;
    tmpfsrun)  # /run on tmpfs, as systemd hosts have it: CRIU keeps its kernel cache there (the
               # VM's /run is ext4). Its entries are bound back in, except restoreprof's folder and
               # the empty criu.kdat.tmp CRIU leaves on a disk /run, which blocks the cache for good.
               mkdir -p /tmp/oldrun && mount --bind /run /tmp/oldrun && mount -t tmpfs -o mode=0755 tmpfs /run
               for e in /tmp/oldrun/*; do n=$(basename "$e")
                 case $n in restoreprof|criu.kdat*) continue ;; esac
                 if [ -d "$e" ]; then mkdir -p "/run/$n"; else touch "/run/$n"; fi; mount --bind "$e" "/run/$n"
               done
               $RESTOREPROF_CRIU check >/dev/null 2>&1; ls -la /run/criu.kdat | tee "$out/tmpfsrun.txt"
               restoreprof doctor 2>&1 | grep -A1 -i "kernel cache\|work folder" | tee -a "$out/tmpfsrun.txt" ;;
    adopt)     # ADOPTV against one request per allocation, expandable segments' count and size
               rp_python benchmarks/bench_adopt.py --allocations 822 --mib 20 --repeat 2 2>&1 | tee "$out/adopt.txt" ;;
    warmsmoke) rp_python benchmarks/bench_warm_limit.py --layers 2 --repeat 1 --plain-repeat 1 --no-trace 2>&1 | tee "$out/warmsmoke.txt" ;;
    h2dlimit)  # issue 14: each path to the GPU against the link, 16 GiB
               rp_python benchmarks/bench_h2d_limit.py --gib 16 --repeat 3 2>&1 | tee "$out/h2dlimit.txt" ;;
    frameworks) # issue 13: PyTorch (4 ways), CuPy, JAX at 8 GiB, plain vs exec vs warm pool
               python3 benchmarks/bench_frameworks.py --json "$out/frameworks.json" 2>&1 | grep -v '^{' | tee "$out/frameworks.txt" ;;
    readahead) rp_python benchmarks/bench_readahead.py --mib 8192 --runs 3 2>&1 | tee "$out/readahead.txt" ;;
    overhead5) rp_python benchmarks/bench_trace_overhead.py --gpu-gib 8 --runs 5 2>&1 | tee "$out/overhead5.txt" ;;
    attach)    rp_python benchmarks/bench_probes.py --attach-only --runs 7 2>&1 | tee "$out/attach.txt" ;;
    pool8w)    rp_python benchmarks/bench_gpu_restore.py --gib 8 --modes plain pool --repeat 5 --json "$out/pool8w.json" 2>&1 | grep -v '^{' | tee "$out/pool8w.txt" ;;
    pool8)     rp_python benchmarks/bench_gpu_restore.py --gib 8 --modes plain preload pool --repeat 3 --cold --json "$out/pool8.json" 2>&1 | grep -v '^{' | tee "$out/pool8.txt" ;;
    pool16)    rp_python benchmarks/bench_gpu_restore.py --gib 16 --modes plain preload pool --repeat 2 --cold --json "$out/pool16.json" 2>&1 | grep -v '^{' | tee "$out/pool16.txt" ;;
    tracepool) # the optimized 8 GiB restore traced, with a warm pool preloading
               rm -rf /tmp/rp-tp; rp_python benchmarks/h100/make_checkpoint.py /tmp/rp-tp/ckpt --gpu-gib 8 --optimized
               restoreprof warm > "$out/tracepool-warm.txt" 2>&1 &
               until grep -q serving "$out/tracepool-warm.txt"; do sleep 0.2; done
               restoreprof trace --restore /tmp/rp-tp/ckpt -o /tmp/rp-tp/trace 2>&1 | tee "$out/trace-pool.txt"
               pkill -TERM -f "restoreprof warm"; wait
               cp /tmp/rp-tp/trace/report.json "$out/report-pool.json"
               kill -9 $(python3 -c "import json;print(json.load(open('/tmp/rp-tp/ckpt/restoreprof.json'))['root_pid'])") 2>/dev/null ;;
    *)         echo "unknown stage $stage" ;;
  esac
done
