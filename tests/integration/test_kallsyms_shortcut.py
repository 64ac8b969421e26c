"""The kallsyms shortcut (probes/kallsyms_shortcut.c) with the real bcc: the profiler's program
compiles to the same instructions with and without it, and with it bcc no longer reads
/proc/kallsyms."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from restoreprof.probes import kallsyms_shortcut

pytestmark = pytest.mark.root

COMPILE = r"""
import json, sys
if sys.argv[1] == "on":
    from restoreprof.probes import kallsyms_shortcut
    assert kallsyms_shortcut.install(), "the shortcut did not load or answer"
import bcc
from restoreprof.probes import bpf_program

def read_bytes():
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar")).split()[1])

text = bpf_program.render(ring_pages=16).encode()
before = read_bytes()
b = bcc.BPF(text=text)
read = read_bytes() - before

def masked(insns):
    # map references are file descriptors, different in every process: mask those immediates
    out, skip = [], False
    for i in range(0, len(insns), 8):
        insn = bytearray(insns[i:i + 8])
        if skip or insn[0] == 0x18:   # BPF_LD | BPF_IMM | BPF_DW spans two instructions
            insn[4:8] = b"\0\0\0\0"
            skip = not skip
        out.append(insn.hex())
    return out

names = sorted(n.decode() for n in b.funcs) + [bpf_program.ENTRY_FUNCTION,
                                               bpf_program.RETURN_FUNCTION]
print(json.dumps({"read": read, "functions": {n: masked(b.dump_func(n)) for n in names}}))
"""


def _compile(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", COMPILE, mode], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_same_program_without_reading_kallsyms():
    kallsyms_shortcut.build()
    kallsyms = len(Path("/proc/kallsyms").read_bytes())
    plain, fast = _compile("off"), _compile("on")
    assert len(plain["functions"]) >= 10
    # the same instructions, probe-read helper calls included (their ids are immediates too)
    assert fast["functions"] == plain["functions"]
    assert plain["read"] >= kallsyms, "bcc itself reads all of /proc/kallsyms to compile"
    assert fast["read"] < plain["read"] - kallsyms // 2, "the shortcut must spare that read"


def test_too_late_once_bcc_is_loaded():
    # ctypes opens libbcc with RTLD_NOW: its calls are bound then, so the shortcut must come first
    code = ("import bcc\nfrom restoreprof.probes import kallsyms_shortcut\n"
            "print(kallsyms_shortcut.install())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
