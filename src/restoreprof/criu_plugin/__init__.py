"""restoreprof inside CRIU: a CRIU plugin, so `criu dump` / `criu restore` run by anyone (podman,
CRI-O, containerd, a person) take restoreprof's fast GPU path.

    python -m restoreprof.criu_plugin build         # scripts/setup.sh does it
    criu dump    -t PID -D DIR --lib $(python -m restoreprof.criu_plugin dir) ...
    criu restore -D DIR -d --lib $(python -m restoreprof.criu_plugin dir) ...

Design (plugin.c says it in full): the C plugin calls the CUDA driver's checkpoint API itself,
through one dlopen'd table: that is the plain path, which must work when nothing else does.
The parts that move GPU memory fast are restoreprof's Python, in an agent process the plugin
starts (agent.py): it offloads through the interception library at dump, preloads (through the
warm pool when one runs) from the moment CRIU's restore starts, and has each process adopt its
memory after the driver's restore. Python because that code exists and is tested there, and
finds a process's control socket however it is namespaced; an agent that fails or cannot start
leaves the driver's path, never a stopped process.

The plugin replaces NVIDIA's cuda_plugin.so: it refuses to load from a folder that also holds
it. The offloaded snapshots and the plugin's record (restoreprof-criu.txt) are written into
CRIU's images folder, so an exported container checkpoint carries them. CRIU_CUDA_STREAMS,
CRIU_CUDA_CHUNK_MB, CRIU_CUDA_USE_PINNED_MEM and CRIU_CUDA_PARALLEL_RESTORE are checked against
restoreprof.settings.schema when the plugin loads; a bad value fails the CRIU run.
"""

from restoreprof.criu_plugin.build import build_plugin, plugin_dir, plugin_path

__all__ = ["build_plugin", "plugin_dir", "plugin_path"]
