"""The BPF C of the restore profiler, kept as text templates with named placeholders.

One program holds three parts:

- the traced process tree: a hash of tgids, seeded with the target and grown on
  sched_process_fork, so processes that CRIU creates during a restore are traced too; or,
  for processes the profiler did not start, a filter on the current task (filters.py: its
  cgroup, its command name, or every task), whose matches are followed into their children;
- syscall tracepoints (read, pread64, preadv, preadv2, openat), enter and exit paired in a
  map so that one record is submitted per completed call;
- one uprobe/uretprobe pair per CUDA function in ``cuda_functions.FUNCTIONS``; the entry saves
  the six argument registers, the return submits one record with them.

Every handler checks the tgid first, so untraced processes pay one hash lookup (and, under a
filter, one helper call).
Records go through one ring buffer; a failed reserve is counted in ``lost``.
"""

from __future__ import annotations

import ctypes as ct
from string import Template

from restoreprof.probes.cuda_functions import FUNCTIONS, CudaFunction
from restoreprof.probes.filters import NO_FILTER

# Operation ids shared by the BPF program and the decoder. CUDA functions follow from
# CUDA_OP_BASE, in the order of cuda_functions.FUNCTIONS.
OP_READ, OP_PREAD64, OP_PREADV, OP_PREADV2, OP_OPENAT = 1, 2, 3, 4, 5
OP_FORK, OP_EXEC, OP_EXIT = 6, 7, 8
CUDA_OP_BASE = 100
SYSCALL_OPS = {OP_READ: "read", OP_PREAD64: "pread64", OP_PREADV: "preadv",
               OP_PREADV2: "preadv2", OP_OPENAT: "openat"}
PROCESS_OPS = {OP_FORK: "fork", OP_EXEC: "exec", OP_EXIT: "exit"}
PATH_MAX_BYTES = 256

# The record every probe submits; records with a path (openat, exec) append PATH_MAX_BYTES.
RECORD_FIELDS = [
    ("start_ns", ct.c_uint64), ("end_ns", ct.c_uint64), ("ret", ct.c_int64),
    ("a0", ct.c_uint64), ("a1", ct.c_uint64), ("a2", ct.c_uint64),
    ("a3", ct.c_uint64), ("a4", ct.c_uint64), ("a5", ct.c_uint64),
    ("out", ct.c_uint64), ("pid", ct.c_uint32), ("tid", ct.c_uint32),
    ("op", ct.c_uint32), ("pad", ct.c_uint32),
]
RECORD_FORMAT = "<QQqQQQQQQQIIII"  # struct.unpack format of the same layout
RECORD_BYTES = 96

_PROLOGUE = r"""
#include <uapi/linux/ptrace.h>

struct record_t {
    u64 start_ns; u64 end_ns; s64 ret;
    u64 a0; u64 a1; u64 a2; u64 a3; u64 a4; u64 a5;
    u64 out;          /* value read at return through an output pointer argument */
    u32 pid; u32 tid; u32 op; u32 pad;
};
struct path_record_t { struct record_t r; char path[${path_max}]; };
struct call_t { u64 start_ns; u64 a[6]; u32 op; s32 out_arg; };

BPF_HASH(traced, u32, u8, ${max_tasks});
BPF_HASH(inflight, u64, struct call_t, ${max_inflight});
BPF_PERCPU_ARRAY(lost, u64, 1);
BPF_RINGBUF_OUTPUT(events, ${ring_pages});

/* The target filter (probes/filters.py): whether the current task matches by itself. */
static __always_inline int matches_filter(void) {
    ${target_filter}
}

/* tgid is always the current task's: in the traced set, or matching the filter. */
static __always_inline int is_traced(u32 tgid) {
    return traced.lookup(&tgid) != 0 || matches_filter();
}

static __always_inline void count_lost(void) {
    int zero = 0;
    u64 *n = lost.lookup(&zero);
    if (n) *n += 1;
}

static __always_inline u64 call_key(u32 tid, u32 op) {
    return ((u64)tid << 32) | op;
}

/* Save the entry time and arguments of a call, keyed by thread and operation so that
   nested calls (cudaMemcpy -> cuMemcpyHtoD_v2) keep their own entries. */
static __always_inline int enter_call(u32 op, u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5) {
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32)) return 0;
    struct call_t call = {};
    call.start_ns = bpf_ktime_get_ns();
    call.a[0] = a0; call.a[1] = a1; call.a[2] = a2;
    call.a[3] = a3; call.a[4] = a4; call.a[5] = a5;
    u64 key = call_key((u32)id, op);
    if (inflight.update(&key, &call)) count_lost();   /* map full: the call is lost */
    return 0;
}

static __always_inline void fill(struct record_t *r, struct call_t *call, u64 id, u32 op, s64 ret) {
    r->start_ns = call->start_ns;
    r->end_ns = bpf_ktime_get_ns();
    r->ret = ret;
    r->a0 = call->a[0]; r->a1 = call->a[1]; r->a2 = call->a[2];
    r->a3 = call->a[3]; r->a4 = call->a[4]; r->a5 = call->a[5];
    r->out = 0;
    r->pid = id >> 32; r->tid = (u32)id; r->op = op; r->pad = 0;
}

/* Submit one record for a completed syscall. */
static __always_inline int exit_call(u32 op, s64 ret) {
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32)) return 0;
    u64 key = call_key((u32)id, op);
    struct call_t *call = inflight.lookup(&key);
    if (!call) return 0;
    struct record_t *r = events.ringbuf_reserve(sizeof(struct record_t));
    if (!r) {
        count_lost();
        inflight.delete(&key);
        return 0;
    }
    fill(r, call, id, op, ret);
    inflight.delete(&key);
    events.ringbuf_submit(r, 0);
    return 0;
}

/* CUDA calls nest (cudaMemcpy -> cuMemcpyHtoD_v2) and return in the reverse order, so one
   shared return probe pops a per-thread stack that the per-function entry probes push. */
#define MAX_DEPTH 8
#define CUDA_KEY_BASE 0x1000   /* apart from the syscall ops, which key by op */
BPF_HASH(depth, u32, u32, ${max_tasks});

/* A CUDA call's entry: count its nesting depth; 0 when it is not recorded (an untraced
 * process, or nested deeper than MAX_DEPTH). */
static __always_inline int cuda_depth_enter(u32 *tid, u32 *level) {
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32)) return 0;
    u32 zero = 0;
    *tid = (u32)id;
    u32 *d = depth.lookup_or_try_init(tid, &zero);
    if (!d) return 0;
    *level = *d;
    *d = *level + 1;
    return *level < MAX_DEPTH;
}

static __always_inline void cuda_store_call(u32 tid, u32 level, struct call_t *call) {
    u64 key = call_key(tid, CUDA_KEY_BASE + level);
    if (inflight.update(&key, call)) count_lost();   /* map full: the call is lost */
}

static __always_inline int push_call(struct pt_regs *ctx, u32 op, s32 out_arg) {
    u32 tid, level;
    if (!cuda_depth_enter(&tid, &level)) return 0;
    struct call_t call = {};
    call.start_ns = bpf_ktime_get_ns();
    call.a[0] = PT_REGS_PARM1(ctx); call.a[1] = PT_REGS_PARM2(ctx);
    call.a[2] = PT_REGS_PARM3(ctx); call.a[3] = PT_REGS_PARM4(ctx);
    call.a[4] = PT_REGS_PARM5(ctx); call.a[5] = PT_REGS_PARM6(ctx);
    call.op = op; call.out_arg = out_arg;
    cuda_store_call(tid, level, &call);
    return 0;
}

/* 2D copies pass a CUDA_MEMCPY2D: keep the memory types, pointers and extent. */
static __always_inline int push_copy2d(struct pt_regs *ctx, u32 op) {
    u32 tid, level;
    if (!cuda_depth_enter(&tid, &level)) return 0;
    u64 f[16] = {};
    u64 desc = PT_REGS_PARM1(ctx);
    if (desc) bpf_probe_read_user(&f, sizeof(f), (void *)desc);
    struct call_t call = {};
    call.start_ns = bpf_ktime_get_ns();
    /* dst, src (host or device pointer by memory type), width * height, stream, types */
    call.a[0] = (f[9] & 0xff) == 1 ? f[10] : f[11];
    call.a[1] = (f[2] & 0xff) == 1 ? f[3] : f[4];
    call.a[2] = f[14] * f[15];
    call.a[3] = PT_REGS_PARM2(ctx);
    call.a[4] = (f[2] & 0xff) | ((f[9] & 0xff) << 8);
    call.op = op; call.out_arg = -1;
    cuda_store_call(tid, level, &call);
    return 0;
}

int cuda_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32)) return 0;
    u32 tid = (u32)id;
    u32 *d = depth.lookup(&tid);
    if (!d || *d == 0) return 0;
    u32 level = *d - 1;
    *d = level;
    if (level >= MAX_DEPTH) return 0;
    u64 key = call_key(tid, CUDA_KEY_BASE + level);
    struct call_t *call = inflight.lookup(&key);
    if (!call) return 0;
    struct record_t *r = events.ringbuf_reserve(sizeof(struct record_t));
    if (!r) {
        count_lost();
        inflight.delete(&key);
        return 0;
    }
    fill(r, call, id, call->op, (s32)PT_REGS_RC(ctx));
    /* out_arg names an argument pointing to a u64 the call wrote (cuMemAlloc's dptr) */
    s32 out_arg = call->out_arg;
    if (out_arg >= 0 && out_arg < 6 && call->a[out_arg & 7])
        bpf_probe_read_user(&r->out, sizeof(r->out), (void *)call->a[out_arg & 7]);
    inflight.delete(&key);
    events.ringbuf_submit(r, 0);
    return 0;
}
"""

_PROCESS_TREE = r"""
TRACEPOINT_PROBE(sched, sched_process_fork) {
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    if (!is_traced(parent)) return 0;
    u32 child = args->child_pid;
    u8 one = 1;
    traced.update(&child, &one);
    struct record_t *r = events.ringbuf_reserve(sizeof(struct record_t));
    if (!r) { count_lost(); return 0; }
    struct call_t call = {};
    call.start_ns = bpf_ktime_get_ns();
    call.a[0] = child;
    fill(r, &call, bpf_get_current_pid_tgid(), ${op_fork}, 0);
    r->end_ns = r->start_ns;
    events.ringbuf_submit(r, 0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec) {
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32)) return 0;
    struct path_record_t *p = events.ringbuf_reserve(sizeof(struct path_record_t));
    if (!p) { count_lost(); return 0; }
    struct call_t call = {};
    call.start_ns = bpf_ktime_get_ns();
    fill(&p->r, &call, id, ${op_exec}, 0);
    p->r.end_ns = p->r.start_ns;
    TP_DATA_LOC_READ_STR(p->path, filename, sizeof(p->path));
    events.ringbuf_submit(p, 0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id, tgid = id >> 32;
    if (!is_traced(tgid)) return 0;
    traced.delete(&tid);
    if (tid != tgid) return 0;   /* a thread ended; its process goes on */
    struct record_t *r = events.ringbuf_reserve(sizeof(struct record_t));
    if (!r) { count_lost(); return 0; }
    struct call_t call = {};
    call.start_ns = bpf_ktime_get_ns();
    fill(r, &call, id, ${op_exit}, 0);
    r->end_ns = r->start_ns;
    events.ringbuf_submit(r, 0);
    return 0;
}
"""

_SYSCALLS = r"""
TRACEPOINT_PROBE(syscalls, sys_enter_read) {
    return enter_call(${op_read}, args->fd, 0, 0, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return exit_call(${op_read}, args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_pread64) {
    return enter_call(${op_pread64}, args->fd, 0, 0, args->pos, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_pread64) { return exit_call(${op_pread64}, args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_preadv) {
    return enter_call(${op_preadv}, args->fd, 0, args->vlen, args->pos_l, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_preadv) { return exit_call(${op_preadv}, args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_preadv2) {
    return enter_call(${op_preadv2}, args->fd, 0, args->vlen, args->pos_l, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_preadv2) { return exit_call(${op_preadv2}, args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    return enter_call(${op_openat}, args->dfd, (u64)args->filename, args->flags, 0, 0, 0);
}
TRACEPOINT_PROBE(syscalls, sys_exit_openat) {
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32)) return 0;
    u64 key = call_key((u32)id, ${op_openat});
    struct call_t *call = inflight.lookup(&key);
    if (!call) return 0;
    struct path_record_t *p = events.ringbuf_reserve(sizeof(struct path_record_t));
    if (!p) { count_lost(); inflight.delete(&key); return 0; }
    fill(&p->r, call, id, ${op_openat}, args->ret);
    bpf_probe_read_user_str(p->path, sizeof(p->path), (void *)call->a[1]);
    inflight.delete(&key);
    events.ringbuf_submit(p, 0);
    return 0;
}
"""

_CUDA_ENTRY = r"""
int enter_${op}(struct pt_regs *ctx) { return push_call(ctx, ${op}, ${out_arg}); }
"""
_CUDA_ENTRY_2D = r"""
int enter_${op}(struct pt_regs *ctx) { return push_copy2d(ctx, ${op}); }
"""
# With uprobe_multi links one entry program serves every function: the link gives each
# attach point a cookie = op | (out_arg + 1) << 16 | copy2d << 24.
_CUDA_ENTRY_BY_COOKIE = r"""
int cuda_enter(struct pt_regs *ctx) {
    u64 cookie = bpf_get_attach_cookie(ctx);
    u32 op = cookie & 0xffff;
    if (cookie & (1ULL << 24)) return push_copy2d(ctx, op);
    return push_call(ctx, op, (s32)((cookie >> 16) & 0xff) - 1);
}
"""
ENTRY_FUNCTION = "cuda_enter"
RETURN_FUNCTION = "cuda_return"


def cookie(index: int) -> int:
    function = FUNCTIONS[index]
    return (cuda_op(index) | (function.out_arg + 1) << 16
            | (1 << 24 if function.args == "copy2d" else 0))


def cuda_op(index: int) -> int:
    return CUDA_OP_BASE + index


def entry_function(index: int) -> str:
    return f"enter_{cuda_op(index)}"


def _cuda_text(index: int, function: CudaFunction) -> str:
    entry = _CUDA_ENTRY_2D if function.args == "copy2d" else _CUDA_ENTRY
    values = {"op": cuda_op(index), "out_arg": function.out_arg}
    return Template(entry).substitute(values)


def render(*, ring_pages: int = 4096, max_tasks: int = 16384, max_inflight: int = 65536,
           with_cuda: bool = True, uprobe_multi: bool = True,
           target_filter: str = NO_FILTER) -> str:
    """The complete BPF C text, placeholders filled. ring_pages must be a power of two.

    target_filter: the body of matches_filter() (filters.py), NO_FILTER for a traced tree only.

    uprobe_multi: one cookie-driven entry program (Linux >= 6.6); otherwise one entry
    program per CUDA function, for bcc's one-probe-per-function attach.
    """
    if ring_pages & (ring_pages - 1):
        raise ValueError(f"ring_pages must be a power of two, not {ring_pages}")
    values = {
        "path_max": PATH_MAX_BYTES, "max_tasks": max_tasks, "max_inflight": max_inflight,
        "ring_pages": ring_pages, "op_read": OP_READ, "op_pread64": OP_PREAD64,
        "op_preadv": OP_PREADV, "op_preadv2": OP_PREADV2, "op_openat": OP_OPENAT,
        "op_fork": OP_FORK, "op_exec": OP_EXEC, "op_exit": OP_EXIT,
        "target_filter": target_filter,
    }
    parts = [Template(_PROLOGUE).substitute(values),
             # The 6.1 kernel headers lack rwf_t, which sys_enter_preadv2's format names.
             "#ifndef rwf_t\n#define rwf_t int\n#endif\n",
             Template(_PROCESS_TREE).substitute(values),
             Template(_SYSCALLS).substitute(values)]
    if with_cuda and uprobe_multi:
        parts.append(_CUDA_ENTRY_BY_COOKIE)
    elif with_cuda:
        parts.extend(_cuda_text(i, f) for i, f in enumerate(FUNCTIONS))
    return "\n".join(parts)
