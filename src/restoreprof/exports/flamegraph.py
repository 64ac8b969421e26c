"""flame.folded and flame.svg: where the restore's wall time went, as a flame graph.

Each instant of the wall time is counted once, for the phase the report gives it (the
critical path: GPU memory restore first, then CPU memory restore, then context creation, else
other), so the frames add up to the traced wall time and each phase's width is its share in
report.json. Within a phase an instant goes to the calls in flight (shared evenly where several
run at once), as ``phase;program;call;detail`` (detail: the file read, or a copy's direction and
host memory); a restore step covers only time in which none of the work it contains was seen
(``phase;restore steps;step``), never beside it. Time with nothing traced is
``other;(nothing traced)``. Weights are microseconds.

The SVG is drawn here, with a small inline script in the manner of Brendan Gregg's
flamegraph.pl: click a frame to zoom into it, click the bottom frame (or press Escape) to
reset; each frame's title gives its share.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from xml.sax.saxutils import escape

from restoreprof.analysis.phases import PRIORITY, wall_bounds
from restoreprof.analysis.stats import transfer_ns
from restoreprof.exports._common import OTHER, detail, phase_of, process_names
from restoreprof.trace.events import MARK, PROCESS, Event
from restoreprof.trace.model import Trace

WIDTH, FRAME_HEIGHT, FONT_PX, PAD = 1200, 17, 12, 10
NOTHING_TRACED = "(nothing traced)"
STEPS_FRAME = "restore steps"
_OWNERS = (*PRIORITY, OTHER)


def _clean(text: str) -> str:
    return text.replace(";", ",").replace("\n", " ").strip() or "?"


def _stack(e: Event, phase: str, names: dict[int, str]) -> str:
    if e.kind == MARK:
        frames = [phase, STEPS_FRAME, e.name]
    else:
        frames = [phase, names.get(e.pid, f"pid {e.pid}"), e.name]
        if detail(e):
            frames.append(detail(e))
    return ";".join(_clean(f) for f in frames)


def wall_time_stacks_ns(trace: Trace) -> Counter[str]:
    """Folded stack -> ns of the wall time it holds; the values add up to the wall time."""
    events = [e for e in trace.events if e.kind != PROCESS and not e.extra.get("outer")]
    wall_start, wall_end = wall_bounds(trace.events)
    phases = phase_of(events)
    names = process_names(trace.events)
    # (time, +1 start / -1 end, phase, step?, stack); ends sort before starts at one instant
    edges: list[tuple[int, int, str, bool, str]] = []
    for e in events:
        end = e.start_ns + transfer_ns(e)   # async copies run until their completion
        if end <= e.start_ns:
            continue
        phase = phases[id(e)]
        stack = _stack(e, phase, names)
        edges.append((e.start_ns, 1, phase, e.kind == MARK, stack))
        edges.append((end, -1, phase, e.kind == MARK, stack))
    edges.sort(key=lambda edge: (edge[0], edge[1]))
    # phase -> (active work, active steps): stack -> how many in flight
    active: dict[str, tuple[Counter, Counter]] = defaultdict(lambda: (Counter(), Counter()))
    weights: Counter[str] = Counter()
    time = wall_start
    for at, delta, phase, is_step, stack in [*edges, (wall_end, 0, OTHER, False, "")]:
        if at > time:
            _attribute(active, at - time, weights)
            time = at
        if delta:
            counter = active[phase][1 if is_step else 0]
            counter[stack] += delta
            if counter[stack] <= 0:
                del counter[stack]
    return weights


def _attribute(active: dict[str, tuple[Counter, Counter]], span_ns: int,
               weights: Counter[str]) -> None:
    """span_ns of wall time to the highest-priority phase in flight: its work, else its steps."""
    for phase in _OWNERS:
        if phase not in active:
            continue
        work, steps = active[phase]
        in_flight = work or steps
        if in_flight:
            total = sum(in_flight.values())
            for stack, count in in_flight.items():
                weights[stack] += span_ns * count / total
            return
    weights[f"{OTHER};{NOTHING_TRACED}"] += span_ns


def folded_stacks(trace: Trace) -> Counter[str]:
    """Folded stack -> microseconds of the wall time (stacks under 1 us are left out)."""
    stacks: Counter[str] = Counter()
    for stack, ns in wall_time_stacks_ns(trace).items():
        if round(ns / 1000) > 0:
            stacks[stack] = round(ns / 1000)
    return stacks


def write_folded(trace: Trace, path: Path) -> Path:
    stacks = folded_stacks(trace)
    path.write_text("".join(f"{stack} {weight}\n" for stack, weight in sorted(stacks.items())))
    return path


def _tree(stacks: Counter[str]) -> dict:
    root: dict = {"name": "all", "value": 0, "children": {}}
    for stack, weight in stacks.items():
        root["value"] += weight
        node = root
        for frame in stack.split(";"):
            node = node["children"].setdefault(frame, {"name": frame, "value": 0, "children": {}})
            node["value"] += weight
    return root


def _color(name: str, depth: int) -> str:
    h = sum(map(ord, name)) % 60
    return f"rgb({205 + h % 50},{90 + (h * 3 + depth * 17) % 120},{40 + h % 30})"


def render_svg(stacks: Counter[str], title: str) -> str:
    root = _tree(stacks)
    total = max(1, root["value"])
    rects: list[str] = []
    depth_max = 0

    def draw(node: dict, x: float, depth: int) -> None:
        nonlocal depth_max
        depth_max = max(depth_max, depth)
        width = (WIDTH - 2 * PAD) * node["value"] / total
        if width < 0.1:
            return
        rects.append((node, x, depth, width))
        child_x = x
        for child in sorted(node["children"].values(), key=lambda c: c["name"]):
            draw(child, child_x, depth + 1)
            child_x += (WIDTH - 2 * PAD) * child["value"] / total

    draw(root, PAD, 0)
    height = (depth_max + 1) * FRAME_HEIGHT + 3 * PAD + 2 * FONT_PX
    body = []
    for node, x, depth, width in rects:
        y = height - PAD - (depth + 1) * FRAME_HEIGHT
        share = 100 * node["value"] / total
        label = f"{node['name']} ({node['value']:,} us, {share:.2f}%)"
        chars = int(width / (FONT_PX * 0.6))
        text = node["name"] if len(node["name"]) <= chars else (
            node["name"][:max(0, chars - 2)] + ".." if chars > 3 else "")
        full = escape(node["name"], {'"': "&quot;"})
        body.append(
            f'<g class="f" data-x="{x:.2f}" data-w="{width:.2f}" data-full="{full}">'
            f"<title>{escape(label)}</title>"
            f'<rect x="{x:.2f}" y="{y}" width="{width:.2f}" height="{FRAME_HEIGHT - 1}" '
            f'fill="{_color(node["name"], depth)}" rx="2"/>'
            f'<text x="{x + 3:.2f}" y="{y + FRAME_HEIGHT - 5}">{escape(text)}</text></g>')
    return f"""<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}"
 xmlns="http://www.w3.org/2000/svg" onload="init(evt)">
<style>text {{ font: {FONT_PX}px monospace; fill: #000; pointer-events: none; }}
.f:hover rect {{ stroke: #000; stroke-width: 0.5; cursor: pointer; }}</style>
<script type="text/ecmascript"><![CDATA[
var frames, W = {WIDTH}, P = {PAD}, C = {FONT_PX * 0.6};
function init(evt) {{
  frames = Array.prototype.slice.call(document.getElementsByClassName("f"));
  frames.forEach(function (g) {{ g.onclick = function () {{ zoom(g); }}; }});
  document.addEventListener("keydown", function (e) {{ if (e.key == "Escape") zoom(frames[0]); }});
}}
function place(g, x, w) {{
  var r = g.getElementsByTagName("rect")[0], t = g.getElementsByTagName("text")[0];
  var name = g.getAttribute("data-full"), n = Math.floor(w / C);
  r.setAttribute("x", x); r.setAttribute("width", Math.max(0, w)); t.setAttribute("x", x + 3);
  t.textContent = name.length <= n ? name : (n > 3 ? name.substr(0, n - 2) + ".." : "");
}}
function zoom(target) {{
  var x0 = parseFloat(target.getAttribute("data-x")), w0 = parseFloat(target.getAttribute("data-w"));
  var scale = (W - 2 * P) / w0, y0 = parseFloat(target.getElementsByTagName("rect")[0].getAttribute("y"));
  frames.forEach(function (g) {{
    var x = parseFloat(g.getAttribute("data-x")), w = parseFloat(g.getAttribute("data-w"));
    var y = parseFloat(g.getElementsByTagName("rect")[0].getAttribute("y"));
    var inside = x >= x0 - 0.01 && x + w <= x0 + w0 + 0.01;
    g.style.display = (inside || y > y0) ? "" : "none";
    if (inside) place(g, P + (x - x0) * scale, w * scale);
    else if (y > y0) place(g, P, W - 2 * P);
  }});
}}
]]></script>
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#fdf6e3"/>
<text x="{WIDTH / 2}" y="{PAD + FONT_PX}" text-anchor="middle">{escape(title)}</text>
<text x="{PAD}" y="{2 * PAD + 2 * FONT_PX}">click a frame to zoom, Escape or the bottom frame to reset</text>
{chr(10).join(body)}
</svg>
"""


def write_svg(trace: Trace, path: Path) -> Path:
    title = f"restoreprof: {trace.meta.target} (wall time, us)"
    path.write_text(render_svg(folded_stacks(trace), title))
    return path
