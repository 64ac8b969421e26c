"""python -m restoreprof.optimizer.shim build [--force]"""

import argparse
import sys

from restoreprof.optimizer.shim.build import build_library

parser = argparse.ArgumentParser(prog="python -m restoreprof.optimizer.shim")
parser.add_argument("action", choices=["build"])
parser.add_argument("--force", action="store_true")
args = parser.parse_args()
try:
    print(f"interception library: {build_library(force=args.force)}")
except (OSError, FileNotFoundError) as exc:
    print(f"interception library not built: {exc}", file=sys.stderr)
    sys.exit(1)
except Exception as exc:  # compiler errors
    print(f"interception library not built: {exc}", file=sys.stderr)
    sys.exit(1)
