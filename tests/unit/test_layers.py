"""The import graph keeps the layers: the ground floor imports nothing above it, the profiler
and the optimizer are two pipelines that never import each other, and each pipeline's stages
import only the stages before them. Every module under src/restoreprof and tui/ is parsed;
every import counts, the ones inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (layer, rank): a module may import its own group, ground groups of lower rank, and groups
# of its own layer of lower rank. "top" may import anything.
GROUPS = {
    "": ("ground", 0),  # the restoreprof package itself: __version__, nothing imported
    "errors": ("ground", 0), "schemas": ("ground", 0), "system": ("ground", 1), "settings": ("ground", 2),
    "cuda": ("ground", 3), "workloads": ("ground", 4),
    "trace": ("profiler", 10), "probes": ("profiler", 11), "analysis": ("profiler", 12),
    "exports": ("profiler", 13), "tui": ("profiler", 14),
    "optimizer": ("optimizer", 20), "store": ("optimizer", 21), "checkpoint": ("optimizer", 22),
    "criu_plugin": ("optimizer", 23),  # restoreprof inside CRIU: the checkpoint path, from C
    "tuner": ("top", 30), "doctor": ("top", 30), "commands": ("top", 31), "cli": ("top", 32),
    "launcher": ("top", 33), "__main__": ("top", 34),
    "front": ("top", 33),  # the native front door's build (front.c: the launcher's client in C)
}


def group_of(module: str) -> str:
    """restoreprof.probes.session -> probes; tui.app -> tui; restoreprof -> ''."""
    parts = module.split(".")
    if parts[0] == "tui":
        return "tui"
    return parts[1] if len(parts) > 1 else ""


def allowed(source: str, target: str) -> bool:
    if source == target:
        return True
    (layer, rank), (target_layer, target_rank) = GROUPS[source], GROUPS[target]
    if layer == "top":
        return True
    if target_layer == "ground":
        return layer != "ground" or target_rank < rank
    return target_layer == layer and target_rank < rank


def modules() -> dict[str, Path]:
    found = {}
    for base, prefix in ((ROOT / "src" / "restoreprof", "restoreprof"), (ROOT / "tui", "tui")):
        for path in base.rglob("*.py"):
            parts = [prefix, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path) -> set[str]:
    """The restoreprof and tui modules that module imports (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
    return {n for n in names if n.split(".")[0] in ("restoreprof", "tui")}


def violations(edges: list[tuple[str, str]]) -> list[str]:
    bad = []
    for source, target in edges:
        s, t = group_of(source), group_of(target)
        if s not in GROUPS or t not in GROUPS:
            bad.append(f"{source} -> {target}: '{s or t}' has no layer in GROUPS")
        elif not allowed(s, t):
            bad.append(f"{source} ({GROUPS[s][0]}: {s}) imports {target} ({GROUPS[t][0]}: {t})")
    return bad


def test_no_import_climbs_a_layer_or_crosses_the_pipelines():
    edges = [(module, target) for module, path in sorted(modules().items())
             for target in sorted(imports_of(module, path))]
    assert len(edges) > 100  # the parse found the imports
    assert violations(edges) == []


def test_every_group_has_a_layer():
    groups = {group_of(m) for m in modules()}
    assert groups <= set(GROUPS), groups - set(GROUPS)


@pytest.mark.parametrize("edge", [
    ("restoreprof.system.paths", "restoreprof.optimizer.shim.build"),   # ground -> optimizer
    ("restoreprof.system.doctor", "restoreprof.probes.attach"),          # ground -> profiler
    ("restoreprof.probes.session", "restoreprof.optimizer.pool"),        # profiler -> optimizer
    ("tui.pipeline", "restoreprof.optimizer.config"),                    # profiler -> optimizer
    ("restoreprof.optimizer.pool", "restoreprof.probes.session"),        # optimizer -> profiler
    ("restoreprof.trace.model", "restoreprof.analysis.phases"),          # a stage climbs
    ("restoreprof.optimizer.engine", "restoreprof.checkpoint.api"),      # a stage climbs
    ("restoreprof.system.paths", "restoreprof.cuda.driver"),             # ground climbs
])
def test_the_check_catches_each_kind_of_violation(edge):
    assert violations([edge]), edge


def test_relative_imports_are_resolved(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("from ..optimizer import pool\nfrom . import paths\n")
    assert imports_of("restoreprof.system.x", path) == {"restoreprof.optimizer",
                                                        "restoreprof.system"}
