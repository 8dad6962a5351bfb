"""`cvae shards verify`: re-read every shard and check it against its manifest.

Checks per shard: present and readable, size and sha256 as recorded, a valid tar whose members form complete
samples (`{key}.frames.<encoding>` + `{key}.cond.npy`), the recorded sample count, frames that decode to
[seq_len, 3, H, W] and finite float32 cond of [seq_len, cond_dim]; per split: unique keys and the total count.
All problems are collected and reported together (DataError); success prints a one-line summary.
"""

from __future__ import annotations

import hashlib
import tarfile

from tqdm import tqdm
from webdataset.gopen import gopen

from toolkit.data.shards import codec
from toolkit.data.shards.manifest import Manifest, file_url, read_manifest
from toolkit.errors import DataError

MAX_REPORTED = 20


def _read(url: str) -> bytes:
    with gopen(url, "rb") as f:
        return f.read()


def _check_sample(key: str, entries: dict[str, bytes], m: Manifest) -> list[str]:
    frames_name = codec.frames_entry(m.encoding)
    expected = {frames_name, codec.COND_ENTRY}
    if set(entries) != expected:
        return [f"sample '{key}' has entries {sorted(entries)}, expected {sorted(expected)}"]
    problems = []
    h, w, c = m.frame_shape
    try:
        frames = codec.decode_frames(entries[frames_name], m.encoding, m.seq_len)
        if tuple(frames.shape) != (m.seq_len, c, h, w):
            problems.append(f"sample '{key}': frames {tuple(frames.shape)}, expected {(m.seq_len, c, h, w)}")
    except (ValueError, RuntimeError) as e:
        problems.append(f"sample '{key}': frames do not decode ({e})")
    try:
        cond = codec.decode_cond(entries[codec.COND_ENTRY])
        if tuple(cond.shape) != (m.seq_len, m.cond_dim):
            problems.append(f"sample '{key}': cond {tuple(cond.shape)}, expected {(m.seq_len, m.cond_dim)}")
        elif not bool(cond.isfinite().all()):
            problems.append(f"sample '{key}': cond has non-finite values")
    except ValueError as e:
        problems.append(f"sample '{key}': cond does not decode ({e})")
    return problems


def _check_shard(url: str, shard: dict, m: Manifest, seen: set[str]) -> tuple[int, list[str]]:
    try:
        data = _read(url)
    except Exception as e:
        return 0, [f"{url}: cannot read ({e})"]
    problems = []
    if len(data) != shard.get("bytes", len(data)):
        problems.append(f"{url}: {len(data)} bytes, manifest says {shard['bytes']}")
    if "sha256" in shard and hashlib.sha256(data).hexdigest() != shard["sha256"]:
        problems.append(f"{url}: sha256 differs from the manifest (corrupted or replaced)")
    try:
        samples = codec.tar_samples(data)
    except tarfile.TarError as e:
        return 0, problems + [f"{url}: not a valid tar ({e})"]
    for key, entries in samples.items():
        problems += [f"{url}: {p}" for p in _check_sample(key, entries, m)]
        if key in seen:
            problems.append(f"{url}: duplicate key '{key}' in the split")
        seen.add(key)
    if len(samples) != shard["count"]:
        problems.append(f"{url}: {len(samples)} sequences, manifest says {shard['count']}")
    return len(samples), problems


def verify_shards(location: str, progress: bool = True) -> dict:
    """Verify all shards of all splits at `location`; returns {split: sequences}; raises DataError on problems."""
    m = read_manifest(location)
    where = file_url(location, "manifest.json")
    counts, problems = {}, []
    total = sum(len(e["shards"]) for e in m.data["splits"].values())
    bar = tqdm(total=total, desc="verifying", unit="shard", disable=not progress)
    for split, entry in m.data["splits"].items():
        seen: set[str] = set()
        n = 0
        for shard in entry["shards"]:
            got, shard_problems = _check_shard(file_url(location, shard["name"]), shard, m, seen)
            n += got
            problems += shard_problems
            bar.update(1)
        if n != entry["count"]:
            problems.append(f"{where}: split '{split}' has {n} readable sequences, manifest says {entry['count']}")
        counts[split] = n
    bar.close()
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{location}: {len(problems)} problem(s):\n  {shown}{more}")
    if progress:
        summary = ", ".join(f"{s} {n}" for s, n in counts.items())
        print(f"OK: {sum(counts.values())} sequences in {total} shard(s) ({summary})")
    return counts
