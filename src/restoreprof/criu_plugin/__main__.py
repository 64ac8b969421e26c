"""python -m restoreprof.criu_plugin build [--force] | dir"""

import argparse
import sys

from restoreprof.criu_plugin.build import build_plugin, plugin_dir

parser = argparse.ArgumentParser(prog="python -m restoreprof.criu_plugin")
parser.add_argument("action", choices=["build", "dir"])
parser.add_argument("--force", action="store_true")
args = parser.parse_args()
if args.action == "dir":
    print(plugin_dir())
    sys.exit(0)
try:
    print(f"CRIU plugin: {build_plugin(force=args.force)} (criu --lib {plugin_dir()})")
except Exception as exc:  # no compiler, no cuda.h, compile errors
    print(f"CRIU plugin not built: {exc}", file=sys.stderr)
    sys.exit(1)
