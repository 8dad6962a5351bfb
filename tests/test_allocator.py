"""`keep_freed_memory`: large tensors' memory is reused without page faults (glibc only)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = """
import resource, sys, torch
from toolkit.allocator import keep_freed_memory
from toolkit.config import load_config
from toolkit.model import SVG
if sys.argv[1] == "on":
    assert keep_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
model = SVG(load_config("recipes/train/demo.yaml").model, cond_dim=0, n_past=2, channels=3).eval()
past, cond = torch.rand(64, 2, 3, 64, 64), torch.zeros(64, 6, 0)  # activations of 1-8 MiB, as in an evaluation
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model.generate(past, cond, 5)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[1:]))
"""


def faults(mode: str, **env) -> int:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_generation_reuses_freed_memory_instead_of_faulting_it_in_again():
    # glibc's adaptive thresholds map, unmap and trim the activations' blocks, so each call faults in (zero-fills)
    # fresh pages; with the memory kept, a repeated call finds its blocks again
    off, on = faults("off"), faults("on")
    assert off > 2000 and on * 5 < off, (off, on)
    # the user's own setting in the environment wins: nothing is changed
    assert faults("on", MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072") > 2000
