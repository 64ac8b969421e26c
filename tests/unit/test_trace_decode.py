"""Decoding BPF records and enriching events: directions, pinned/pageable, async completion."""

from __future__ import annotations

import struct

from restoreprof.probes import bpf_program
from restoreprof.probes.cuda_functions import BY_SYMBOL, FUNCTIONS
from restoreprof.probes.decode import Enricher, decode, enrich
from restoreprof.trace.events import CUDA, Event

HOST, PINNED_BUF, DEV = 0x1000_0000, 0x2000_0000, 0x7000_0000


def _record(op: int, args=(0,) * 6, out=0, ret=0, start=100, end=200, pid=7, tid=8,
            path: bytes = b"") -> bytes:
    args = (tuple(args) + (0,) * 6)[:6]
    raw = struct.pack(bpf_program.RECORD_FORMAT, start, end, ret, *args, out, pid, tid, op, 0)
    assert len(raw) == bpf_program.RECORD_BYTES
    return raw + path.ljust(bpf_program.PATH_MAX_BYTES, b"\0") if path else raw


def _cuda(symbol: str, args=(0,) * 6, **kw) -> Event:
    return decode(_record(bpf_program.cuda_op(BY_SYMBOL[symbol]), args, **kw))


def test_syscall_records():
    e = decode(_record(bpf_program.OP_PREADV, (5, 0, 2, 0, 0, 0), ret=8192))
    assert (e.kind, e.name, e.fd, e.bytes, e.duration_ns) == ("syscall", "preadv", 5, 8192, 100)
    failed = decode(_record(bpf_program.OP_READ, (5, 0, 0, 0, 0, 0), ret=-11))
    assert failed.bytes == 0 and failed.ret == -11
    opened = decode(_record(bpf_program.OP_OPENAT, ret=9, path=b"/ckpt/pages-1.img"))
    assert (opened.fd, opened.path) == (9, "/ckpt/pages-1.img")


def test_process_records():
    fork = decode(_record(bpf_program.OP_FORK, (1234, 0, 0, 0, 0, 0)))
    assert (fork.kind, fork.name, fork.extra) == ("process", "fork", {"child": 1234})
    exe = decode(_record(bpf_program.OP_EXEC, path=b"/usr/sbin/criu"))
    assert exe.path == "/usr/sbin/criu"


def test_cuda_arguments_decoded_per_function():
    alloc = _cuda("cuMemAlloc_v2", (0xAA, 4096, 0, 0, 0, 0), out=DEV)
    assert (alloc.bytes, alloc.address) == (4096, DEV)
    copy = _cuda("cuMemcpyHtoDAsync_v2", (DEV, HOST, 100, 0x55, 0, 0))
    assert (copy.direction, copy.bytes, copy.stream) == ("htod", 100, 0x55)
    runtime = _cuda("cudaMemcpyAsync", (HOST, DEV, 64, 2, 0x66, 0))
    assert (runtime.direction, runtime.stream) == ("dtoh", 0x66)
    two_d = _cuda("cuMemcpy2D_v2", (DEV, HOST, 12000, 0, 1 | (2 << 8), 0))
    assert (two_d.direction, two_d.bytes) == ("htod", 12000)
    pitch = _cuda("cuMemAllocPitch_v2", (0, 0, 512, 8, 4, 0), out=DEV)
    assert pitch.bytes == 4096
    ckpt = _cuda("cuCheckpointProcessRestore", (4242, 0, 0, 0, 0, 0))
    assert ckpt.extra == {"target_pid": 4242}


def test_every_function_decodes():
    for index, function in enumerate(FUNCTIONS):
        event = decode(_record(bpf_program.cuda_op(index), (1, 2, 3, 4, 5, 6), out=9))
        assert event.kind == CUDA and event.name == function.symbol


def test_enricher_classifies_and_completes():
    enricher = Enricher()
    t = iter(range(1000, 100000, 100))

    def feed(symbol, args, out=0):
        start = next(t)
        event = _cuda(symbol, args, out=out, start=start, end=start + 50)
        enricher.add(event)
        return event

    feed("cuMemAlloc_v2", (0, 1 << 20), out=DEV)
    feed("cuMemHostAlloc", (0, 1 << 20, 0), out=PINNED_BUF)
    generic = feed("cuMemcpy", (DEV, PINNED_BUF + 10, 100))
    assert (generic.direction, generic.host_memory, generic.address) == ("htod", "pinned", DEV)
    back = feed("cuMemcpy", (HOST, DEV + 5, 100))
    assert (back.direction, back.host_memory) == ("dtoh", "pageable")
    default_kind = feed("cudaMemcpy", (DEV, HOST, 100, 4))
    assert default_kind.direction == "htod"
    a1 = feed("cuMemcpyHtoDAsync_v2", (DEV, HOST, 10, 0x55))
    a2 = feed("cuMemcpyHtoDAsync_v2", (DEV, HOST, 10, 0x66))
    sync = feed("cuStreamSynchronize", (0x55,))
    assert a1.complete_ns == sync.end_ns and a2.complete_ns == 0
    record = feed("cuEventRecord", (0xE, 0x66))
    later = feed("cuMemcpyHtoDAsync_v2", (DEV, HOST, 10, 0x66))
    event_sync = feed("cuEventSynchronize", (0xE,))
    assert a2.complete_ns == event_sync.end_ns and record.stream == 0x66
    assert later.complete_ns == 0            # recorded after the event: not covered
    ctx_sync = feed("cuCtxSynchronize", ())
    assert later.complete_ns == ctx_sync.end_ns
    feed("cuMemFreeHost", (PINNED_BUF,))
    after = feed("cuMemcpyHtoD_v2", (DEV, PINNED_BUF, 10))
    assert after.host_memory == "pageable"


def test_outer_runtime_call_marked_and_enrich_is_repeatable():
    inner = _cuda("cuMemcpyHtoD_v2", (DEV, HOST, 10), start=110, end=150)
    outer = _cuda("cudaMemcpy", (DEV, HOST, 10, 1), start=100, end=160)
    other = _cuda("cuMemcpyHtoD_v2", (DEV, HOST, 10), start=200, end=250)
    events = [inner, outer, other]
    enrich(events)
    assert outer.extra.get("outer") and not inner.extra.get("outer")
    assert not other.extra.get("outer")
    enrich(list(reversed(events)))   # arrival order does not matter: completion order rules
    assert outer.extra.get("outer") and not inner.extra.get("outer")


def test_reads_get_the_file_name_of_their_fd():
    enricher = Enricher()
    opened = decode(_record(bpf_program.OP_OPENAT, ret=9, path=b"/ckpt/pages-1.img"))
    read = decode(_record(bpf_program.OP_PREADV, (9, 0, 1, 0, 0, 0), ret=4096))
    enricher.add(opened)
    enricher.add(read)
    assert read.path == "/ckpt/pages-1.img"


def test_render_fills_every_placeholder():
    for multi in (True, False):
        text = bpf_program.render(uprobe_multi=multi)
        assert "${" not in text and "rwf_t" in text
    assert "int enter_100(" in bpf_program.render(uprobe_multi=False)
    cookie = bpf_program.cookie(BY_SYMBOL["cuMemAlloc_v2"])
    assert cookie & 0xFFFF == bpf_program.cuda_op(BY_SYMBOL["cuMemAlloc_v2"])
    assert (cookie >> 16) & 0xFF == 1   # out_arg 0, stored + 1
