"""`keep_freed_memory`: freed tensors' memory is reused without page faults (glibc only)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = """
import resource, sys, torch
from toolkit.allocator import keep_freed_memory
if sys.argv[1] == "on":
    assert keep_freed_memory()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.empty(3 << 20).fill_(1.0) for _ in range(4)]  # 4 x 12 MiB, freed together
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[1:]))
"""


def faults(mode: str, **env) -> int:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_tensor_is_reused_without_page_faults():
    # 48 MiB in 4 KiB pages is 12288 first-touch faults when the memory was given back to the system: glibc's
    # adaptive thresholds keep one freed block, but trim 48 MiB freed at the heap's top
    assert faults("off") > 10000
    assert faults("on") < 100
    # the user's own setting in the environment wins: nothing is changed
    assert faults("on", MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072") > 10000
