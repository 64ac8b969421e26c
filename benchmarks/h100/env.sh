# Source on the H100 machine from the repository root: sets up the carried bundle (.h100, made by
# shared/h100/bundle.sh) and installs restoreprof for /opt/torch/.venv's Python without a registry.
#   source benchmarks/h100/env.sh
# Then `restoreprof ...` runs with bcc importable and CRIU resolved ($RP_CRIU).
set -e
source .h100/activate.sh .h100 >/dev/null
# one wheel, built once: installed here and, by the battery's stage ownvenv, into a venv of its own
rm -rf /tmp/rp-wheel
{ python3 -m pip wheel -q --no-deps --no-build-isolation --no-index -w /tmp/rp-wheel . &&
  python3 -m pip install -q --upgrade --no-deps --no-index --target /tmp/rp-pkg /tmp/rp-wheel/restoreprof-*.whl; } \
  >/tmp/rp-install.log 2>&1 || { cat /tmp/rp-install.log; return 1; }
export PYTHONPATH=/tmp/rp-pkg:$PYTHONPATH
export RESTOREPROF_CRIU=$RP_CRIU
# libbcc's libraries only for restoreprof's own processes (they are bookworm's builds).
restoreprof() { LD_LIBRARY_PATH=$RP_BCC_LD_LIBRARY_PATH PYTHONPATH=$RP_BCC_PYTHONPATH:$PYTHONPATH python3 -m restoreprof "$@"; }
rp_python() { LD_LIBRARY_PATH=$RP_BCC_LD_LIBRARY_PATH PYTHONPATH=$RP_BCC_PYTHONPATH:$PYTHONPATH python3 "$@"; }
export -f restoreprof rp_python
set +e
