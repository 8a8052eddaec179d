"""The malloc tuning: after it, a large block comes from the reusable heap instead of a fresh mmap.
Each case runs in a child process, since the tuning is process-wide and one-way."""

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")

# mallinfo2().hblkhd is the number of bytes malloc holds in mmap'ed blocks.
MALLINFO = r"""
import ctypes
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
"""
CHILD = MALLINFO + r"""
import mixerlab
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



WORKER = MALLINFO + r"""
import sys
import torch
from torch.utils.data import DataLoader, Dataset
import mixerlab
from mixerlab.data.stream import loader_options

class MappedInWorker(Dataset):
    def __len__(self):
        return 1
    def __getitem__(self, i):
        before = libc.mallinfo2().hblkhd
        p = libc.malloc(8 << 20)
        mapped = libc.mallinfo2().hblkhd - before
        libc.free(ctypes.c_void_p(p))
        return mapped >= 8 << 20

mixerlab.tune_cpu_allocator()
opts = {**loader_options(1, torch.device("cpu")), "collate_fn": lambda batch: batch[0]}
if sys.argv[1] == "without":
    opts.pop("worker_init_fn")
print(next(iter(DataLoader(MappedInWorker(), **opts))))
"""


@pytest.mark.parametrize("init, mapped", [("with", "True"), ("without", "False")])
def test_a_decoding_worker_gets_default_malloc_back(init, mapped):
    """A forked DataLoader worker inherits the parent's tuning and would keep every image it decoded;
    the loaders' worker_init_fn gives it glibc's defaults again, so a large block is mmap'ed (and
    returned on free). Without it (the control), the worker serves it from its heap."""
    import os

    out = subprocess.run([sys.executable, "-c", WORKER, init], env={**os.environ, "MIXERLAB_MALLOC": ""},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [mapped]
