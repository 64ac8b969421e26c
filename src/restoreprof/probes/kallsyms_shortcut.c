/*
 * Spares bcc a scan of the kernel's whole symbol table on every compile.
 *
 To pick between bpf_probe_read_kernel / _user and the older bpf_probe_read, bcc's frontend
 * asks bcc_symcache_resolve_name for those helpers in the kernel's symbols
 * (BFrontendAction::DoMiscWorkAround, BTypeVisitor::VisitCallExpr), which reads all of
 * /proc/kallsyms (100,000+ lines) into a hash table first: 0.1 to 0.3 s of the 0.5 to 1 s that
 * `restoreprof trace` spends before its probes are attached, for a yes or no.
 *
 * Loaded RTLD_GLOBAL before libbcc (probes/kallsyms_shortcut.py), this library's
 * bcc_symcache_resolve_name comes first in libbcc's own calls through its PLT. It answers that
 * question by asking the verifier whether the helper exists (one bpf(2) call, well under a
 * millisecond), and hands every other lookup, and these when the verifier cannot be asked, to
 * libbcc's own function. Calls made through libbcc's handle (bcc's Python module) never come
 * here.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <linux/bpf.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
/* The helpers bcc asks about; all four take (void *dst, u32 size, const void *src). */
static const struct {
    const char *name;
    int id;
} helpers[] = {
    { "bpf_probe_read_user", 112 },       /* BPF_FUNC_probe_read_user, Linux 5.5 */
    { "bpf_probe_read_kernel", 113 },     /* BPF_FUNC_probe_read_kernel */
    { "bpf_probe_read_user_str", 114 },   /* BPF_FUNC_probe_read_user_str */
    { "bpf_probe_read_kernel_str", 115 }, /* BPF_FUNC_probe_read_kernel_str */
};
#define N_HELPERS (int)(sizeof(helpers) / sizeof(helpers[0]))

typedef int (*resolve_name_fn)(void *resolver, const char *module, const char *name,
                               uint64_t *addr);

static unsigned kernel_version_code(void)
{
    struct utsname u;
    unsigned major = 0, minor = 0, patch = 0;
    if (uname(&u) == 0)
        sscanf(u.release, "%u.%u.%u", &major, &minor, &patch);
    return (major << 16) | (minor << 8) | (patch > 255 ? 255 : patch);
}

/* 1: the verifier accepts a call of helper id; -1: it refuses it, for a reason not told apart
 * here (an unknown helper, or no permission): then bcc looks it up itself. */
static int helper_exists(int id)
{
    struct bpf_insn program[] = {
        { .code = BPF_ALU64 | BPF_MOV | BPF_X, .dst_reg = 1, .src_reg = 10 }, /* r1 = fp    */
        { .code = BPF_ALU64 | BPF_ADD | BPF_K, .dst_reg = 1, .imm = -8 },     /* r1 -= 8    */
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 2, .imm = 8 },      /* r2 = 8     */
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 3, .imm = 0 },      /* r3 = 0     */
        { .code = BPF_JMP | BPF_CALL, .imm = id },                            /* call id    */
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0 },      /* r0 = 0     */
        { .code = BPF_JMP | BPF_EXIT },
    };
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_KPROBE;
    attr.insns = (uint64_t)(uintptr_t)program;
    attr.insn_cnt = sizeof(program) / sizeof(program[0]);
    attr.license = (uint64_t)(uintptr_t)"GPL";
    attr.kern_version = kernel_version_code();
    int fd = (int)syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
    if (fd >= 0) {
        close(fd);
        return 1;
    }
    return -1;
}

/* libbcc's own function, found once (libbcc is loaded by then: it is the caller). */
static resolve_name_fn real_resolve_name(void)
{
    static _Atomic(resolve_name_fn) real;
    resolve_name_fn fn = atomic_load(&real);
    if (!fn) {
        void *bcc = dlopen("libbcc.so.0", RTLD_LAZY | RTLD_NOLOAD);
        if (bcc) {
            fn = (resolve_name_fn)dlsym(bcc, "bcc_symcache_resolve_name");
            dlclose(bcc); /* drops only this lookup's reference: libbcc stays loaded */
            atomic_store(&real, fn);
        }
    }
    return fn;
}

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int known[N_HELPERS]; /* helper_exists() of each, asked once */

static void ask(void)
{
    for (int i = 0; i < N_HELPERS; i++)
        known[i] = helper_exists(helpers[i].id);
}

EXPORT int bcc_symcache_resolve_name(void *resolver, const char *module, const char *name,
                                     uint64_t *addr)
{
    for (int i = 0; !module && name && i < N_HELPERS; i++) {
        if (strcmp(name, helpers[i].name) != 0)
            continue;
        pthread_once(&once, ask);
        if (known[i] == 1) {
            *addr = 0; /* bcc reads only the sign of the answer */
            return 0;
        }
        break;
    }
    resolve_name_fn real = real_resolve_name();
    return real ? real(resolver, module, name, addr) : -1;
}

/* For restoreprof's check that the shortcut is in place: how many helpers it can answer for. */
EXPORT int restoreprof_kallsyms_shortcut_answers(void)
{
    pthread_once(&once, ask);
    int n = 0;
    for (int i = 0; i < N_HELPERS; i++)
        n += known[i] == 1;
    return n;
}
