"""The malloc tuning: after it, a large block comes from the reusable heap instead of a fresh mmap.
Each case runs in a child process, since the tuning is process-wide and one-way."""

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")

# mallinfo2().hblkhd is the number of bytes malloc holds in mmap'ed blocks.
CHILD = r"""
import ctypes, os, sys
import mixerlab
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
tuned = mixerlab.tune_cpu_allocator()
before = libc.mallinfo2().hblkhd
p = libc.malloc(8 << 20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(ctypes.c_void_p(p))
print(tuned, mapped >= 8 << 20, mixerlab.tune_cpu_allocator())
"""


def run_child(env_extra: dict[str, str]) -> str:
    import os

    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_tuned_malloc_serves_large_blocks_from_the_heap():
    assert run_child({"MIXERLAB_MALLOC": ""}) == ["True", "False", "True"]


def test_opt_out_leaves_malloc_alone():
    assert run_child({"MIXERLAB_MALLOC": "default"}) == ["False", "True", "False"]
