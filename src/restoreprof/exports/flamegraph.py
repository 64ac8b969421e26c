"""flame.folded and flame.svg: where the traced time went, as a flame graph.

Stacks are ``phase;program;call;detail`` (detail: the file read, or a copy's direction and
host memory), weighted by the calls' time in microseconds. The SVG is drawn here, with a small
inline script in the manner of Brendan Gregg's flamegraph.pl: click a frame to zoom into it,
click the bottom frame (or press Escape) to reset; each frame's title gives its share.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape

from restoreprof.exports._common import detail, phase_of, process_names
from restoreprof.trace.events import PROCESS, Event
from restoreprof.trace.model import Trace

WIDTH, FRAME_HEIGHT, FONT_PX, PAD = 1200, 17, 12, 10


def _clean(text: str) -> str:
    return text.replace(";", ",").replace("\n", " ").strip() or "?"


def folded_stacks(trace: Trace) -> Counter[str]:
    events: list[Event] = [e for e in trace.events if e.kind != PROCESS]
    phases = phase_of(events)
    names = process_names(trace.events)
    stacks: Counter[str] = Counter()
    for e in events:
        if e.extra.get("outer"):
            continue   # the inner call carries the time and bytes, once
        weight_us = (max(e.end_ns, e.complete_ns) - e.start_ns) // 1000
        if weight_us <= 0:
            continue
        frames = [phases[id(e)], names.get(e.pid, f"pid {e.pid}"), e.name]
        if detail(e):
            frames.append(detail(e))
        stacks[";".join(_clean(f) for f in frames)] += weight_us
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
    title = f"restoreprof: {trace.meta.target} (time in calls, us)"
    path.write_text(render_svg(folded_stacks(trace), title))
    return path
