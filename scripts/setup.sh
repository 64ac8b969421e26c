#!/usr/bin/env bash
# restoreprof setup: turns a fresh Debian 12, Debian 13 or Ubuntu 24.04 machine into one that can
# trace and restore. Idempotent: a second run checks each step and changes nothing.
#
#   ./scripts/setup.sh            system packages (as root), CRIU, tracefs, .venv, native library
#
# Steps that cannot be done (not root, no package registry) say what is missing and what to do,
# and the rest carries on. The exit status is non-zero only when .venv could not be made.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv"
deps="$repo/.deps"
missing=()

say()  { printf 'setup: %s\n' "$*"; }
miss() { missing+=("$1"); printf 'setup: MISSING %s\n' "$1"; }
is_root() { [ "$(id -u)" -eq 0 ]; }

. /etc/os-release 2>/dev/null || { ID=unknown; VERSION_CODENAME=unknown; }
kernel=$(uname -r)
# The machine's architecture, as Debian names packages (amd64, arm64), its multiarch triplet
# (the folder under /usr/lib) and its dynamic loader: GH200 and GB200 machines are arm64.
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
case "$arch" in
  amd64|x86_64)  arch=amd64; triplet=x86_64-linux-gnu;  loader=ld-linux-x86-64.so.2 ;;
  arm64|aarch64) arch=arm64; triplet=aarch64-linux-gnu; loader=ld-linux-aarch64.so.1 ;;
  *)             triplet=$(gcc -print-multiarch 2>/dev/null || echo "$arch-linux-gnu"); loader="" ;;
esac

# --- 1. bcc and kernel headers -------------------------------------------------------------
need_pkgs=()
dpkg -s python3-bpfcc >/dev/null 2>&1 || need_pkgs+=(python3-bpfcc)
if [ ! -e "/lib/modules/$kernel/build/include" ]; then
  case "$ID" in
    ubuntu) hdr=linux-headers-generic ;;
    *)      hdr=linux-headers-$arch ;;
  esac
  dpkg -s "$hdr" >/dev/null 2>&1 || need_pkgs+=("$hdr")
fi
python3 -m venv --help >/dev/null 2>&1 || need_pkgs+=(python3-venv)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if is_root && command -v apt-get >/dev/null; then
    say "installing ${need_pkgs[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"; } >/dev/null 2>&1; then
      miss "packages ${need_pkgs[*]}: apt-get failed (no registry?); install them, or on a machine without one use shared/h100/bundle.sh and 'source BUNDLE/activate.sh BUNDLE'"
    fi
  else
    miss "packages ${need_pkgs[*]}: run this script as root (sudo ./scripts/setup.sh) or install them yourself"
  fi
fi
# Link the newest installed headers for a kernel the distribution has none for (custom kernels).
if [ ! -e "/lib/modules/$kernel/build/include" ]; then
  h=$(ls -d /usr/src/linux-headers-*-"$arch" /usr/src/linux-headers-*-generic 2>/dev/null | sort -V | tail -1)
  if [ -n "$h" ] && is_root; then
    c=${h%-"$arch"}-common; [ -d "$c" ] || c=${h%-generic}
    mkdir -p "/lib/modules/$kernel"
    ln -sfn "$h" "/lib/modules/$kernel/build"
    [ -d "$c" ] && ln -sfn "$c" "/lib/modules/$kernel/source"
    say "linked kernel headers $h for $kernel"
  elif [ -n "${RP_BCC_PYTHONPATH:-}" ]; then
    say "kernel headers come from the H100 bundle (activate.sh)"
  else
    miss "kernel headers for $kernel: install linux-headers-$arch and link them to /lib/modules/$kernel/build (as root, rerun this script)"
  fi
fi

# The aarch64 cross compiler, on amd64 only: CI compiles the native library for aarch64 too
# (tests/unit/test_native_arch.py), so that an x86-only construct cannot slip in. Optional.
if [ "$arch" = amd64 ] && ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  if is_root && command -v apt-get >/dev/null && DEBIAN_FRONTEND=noninteractive \
       apt-get install -y -qq gcc-aarch64-linux-gnu >/dev/null 2>&1; then
    say "installed gcc-aarch64-linux-gnu (the aarch64 build check)"
  else
    say "no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu): the aarch64 build check is skipped"
  fi
fi

# --- 2. CRIU >= 4.0 behind one resolved path -------------------------------------------------
# The code resolves CRIU through restoreprof.system.paths: $RESTOREPROF_CRIU, then
# .venv/libexec/restoreprof/criu (written here), then criu on PATH.
criu_ok() { "$1" --version 2>/dev/null | awk '/^Version:/{split($2,v,"."); exit !(v[1]>=4)}'; }
criu_link="$venv/libexec/restoreprof/criu"
mkdir -p "$venv/libexec/restoreprof"
if [ -x "$criu_link" ] && criu_ok "$criu_link"; then
  :
elif [ -n "${RP_CRIU:-}" ] && criu_ok "$RP_CRIU"; then
  ln -sfn "$RP_CRIU" "$criu_link"; say "CRIU from the H100 bundle: $RP_CRIU"
elif command -v criu >/dev/null && criu_ok "$(command -v criu)"; then
  ln -sfn "$(command -v criu)" "$criu_link"; say "CRIU from the system: $(command -v criu)"
elif [ "${VERSION_CODENAME:-}" != bookworm ] && is_root && command -v apt-get >/dev/null \
     && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq criu >/dev/null 2>&1 && criu_ok "$(command -v criu)"; then
  ln -sfn "$(command -v criu)" "$criu_link"; say "installed the distribution's CRIU"
elif is_root && command -v apt-get >/dev/null && [ -n "$loader" ]; then
  # Bookworm's criu 3.17 fails on new kernels: run trixie's 4.x with trixie's glibc, privately.
  say "fetching trixie's CRIU into $deps/criu"
  tmp=$(mktemp -d)
  mkdir -p "$tmp/lists/partial" "$deps/criu"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" >"$tmp/trixie.list"
  o=(-o "Dir::Etc::SourceList=$tmp/trixie.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$tmp/lists")
  if apt-get "${o[@]}" update -qq >/dev/null 2>&1 && (cd "$tmp" && apt-get "${o[@]}" download criu libcompel1 libc6 \
       libgnutls30t64 libnftables1 libnl-3-200 libprotobuf-c1 libbsd0 libnet1 libuuid1 libnettle8t64 libhogweed6t64 \
       libgmp10 libidn2-0 libunistring5 libtasn1-6 libp11-kit0 libjansson4 libmnl0 libnftnl11 libxtables12 libmd0 \
       libffi8 libgcc-s1 >/dev/null 2>&1); then
    for f in "$tmp"/*.deb; do dpkg -x "$f" "$deps/criu"; done
    cat >"$deps/criu-wrapper" <<EOS
#!/bin/sh
exec $deps/criu/usr/lib/$triplet/$loader --library-path $deps/criu/usr/lib/$triplet $deps/criu/usr/sbin/criu "\$@"
EOS
    chmod +x "$deps/criu-wrapper"
    ln -sfn "$deps/criu-wrapper" "$criu_link"
    criu_ok "$criu_link" && say "CRIU $("$criu_link" --version | awk '/^Version/{print $2}') in $deps/criu" \
      || miss "CRIU: trixie's build did not run; see shared/ENVIRONMENT.md"
  else
    miss "CRIU >= 4.0: could not download trixie's criu (no registry?); install CRIU >= 4.0 and set RESTOREPROF_CRIU"
  fi
  rm -rf "$tmp"
else
  miss "CRIU >= 4.0: run this script as root, or install CRIU >= 4.0 and set RESTOREPROF_CRIU=/path/to/criu"
fi

# --- 2b. podman (optional: the container checkpoint tests; vfs storage, no registry needed) ---
# Checkpoint needs runc (bookworm's crun is built without CRIU) and a CRIU >= 4 on PATH, where
# runc looks for it: link the one above when the system has none.
if { ! command -v podman >/dev/null || ! command -v runc >/dev/null; } && is_root && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null 2>&1 \
    && say "installed podman and runc" || say "podman not installed (container tests skip): apt-get install podman runc"
fi
if command -v podman >/dev/null && ! { command -v criu >/dev/null && criu_ok "$(command -v criu)"; } \
   && [ -x "$criu_link" ] && is_root; then
  ln -sfn "$(readlink -f "$criu_link")" /usr/local/sbin/criu && say "linked CRIU for runc: /usr/local/sbin/criu"
fi

# --- 3. tracefs and debugfs -------------------------------------------------------------------
if ! mountpoint -q /sys/kernel/tracing; then
  if is_root && mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null; then say "mounted tracefs"
  else miss "tracefs: as root, mount -t tracefs tracefs /sys/kernel/tracing"; fi
fi
mountpoint -q /sys/kernel/debug || { is_root && mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null; }

# --- 4. .venv with the package (editable) and the distribution's bcc -------------------------
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$py" -m venv "$venv" || { echo "setup: FAILED to create $venv with $py"; exit 1; }
fi
stamp="$venv/.restoreprof-installed"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  say "installing restoreprof (editable) and its test dependencies"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1
  if "$venv/bin/pip" install -q -e "$repo[test]"; then touch "$stamp"
  else echo "setup: FAILED: pip install -e .[test] (see above)"; exit 1; fi
fi
# bcc is pure Python over libbcc.so.0: expose only the bcc folder to the venv.
bcc_src=""
for d in "${RP_BCC_PYTHONPATH:-}" /usr/lib/python3/dist-packages; do
  [ -n "$d" ] && [ -d "$d/bcc" ] && { bcc_src="$d/bcc"; break; }
done
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -n "$bcc_src" ]; then
  mkdir -p "$venv/lib/restoreprof-bcc"
  ln -sfn "$bcc_src" "$venv/lib/restoreprof-bcc/bcc"
  echo "$venv/lib/restoreprof-bcc" >"$site/restoreprof-bcc.pth"
else
  miss "bcc Python module: install python3-bpfcc (as root, rerun this script)"
fi

# --- 5. native parts: the LD_PRELOAD interception library, the kallsyms shortcut ----------------
if ! "$venv/bin/python" -m restoreprof.optimizer.shim build; then
  miss "native library: a C compiler and the CUDA headers (cuda.h) are needed: apt-get install gcc, set CUDA_HOME"
fi
if ! "$venv/bin/python" -m restoreprof.criu_plugin build; then
  miss "CRIU plugin (the fast path inside criu and podman): a C compiler and cuda.h are needed: apt-get install gcc, set CUDA_HOME"
fi
if ! "$venv/bin/python" -m restoreprof.probes.kallsyms_shortcut build; then
  miss "kallsyms shortcut (faster trace start-up): a C compiler and linux/bpf.h are needed: apt-get install gcc linux-libc-dev"
fi

if [ ${#missing[@]} -gt 0 ]; then
  say "done, with ${#missing[@]} missing piece(s) listed above; 'restoreprof doctor' shows the rest"
else
  say "done. Try: $venv/bin/restoreprof doctor"
fi
exit 0
