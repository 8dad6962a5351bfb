"""`cvae shards convert` speed: BAIR-layout folders and BAIR's tar (TFRecords), 1 and 2 worker processes.

    python benchmarks/convert_speed.py [--sequences 400] [--rounds 5] [--workdir /tmp/cvae-convert-bench]

Generates N pushing-world sequences in the BAIR folder layout and, from the same sequences, BAIR's tarball layout
(`softmotion30_44k/train/traj_*_to_*.tfrecords` of 256 records, each record a full BAIR-size tf.train.Example
with both cameras, about 740 KB), once, reused from --workdir. Each round converts every variant once into a
fresh directory (png encoding, 256 per shard, no progress bar), the variants alternating within the round; a
warm-up round comes first (page cache, forkserver start) and the median over `--rounds` rounds is printed: wall
rate, the median of the per-round 2-worker/1-worker ratios, the CPU time per sequence over all processes (main
and workers; its inverse is the rate per core) and of the main process alone (reading the input, handing out
jobs, writing the shards: what does not run in the workers). "2 x 1 at once" runs two independent one-worker
conversions of the tar at the same time: what two busy processes get from the machine as it is (Linux groups
CPU time by session, so on a shared machine a session may get one core however many processes it runs).
"""

from __future__ import annotations

import argparse
import multiprocessing.forkserver
import os
import resource
import shutil
import statistics
import tarfile
import time
from pathlib import Path

# Workers start from a forkserver and import this __main__ module again (CPython 3.11's forkserver does not preload
# it), so the toolkit is imported inside the functions: as with `python -m toolkit`, a worker starts light.


def make_inputs(work: Path, n: int) -> tuple[Path, Path]:
    """(folders root, tar path) holding the same N training sequences."""
    from toolkit.data.sources.folders import iter_folder_split
    from toolkit.data.sources.tfrecord import make_bair_example, write_tfrecord
    from toolkit.data.worlds.synth import generate_dataset

    folders, tar_path = work / f"folders-{n}", work / f"bair-{n}.tar"
    if not folders.exists():
        generate_dataset(folders, "pushing", {"train": n, "validate": 0, "test": 0}, seed=0, progress=False)
    if not tar_path.exists():
        tree = work / f"tfrecords-{n}" / "softmotion30_44k" / "train"
        seqs = list(iter_folder_split(folders / "train"))
        for start in range(0, n, 256):
            write_tfrecord(tree / f"traj_{start}_to_{start + 255}.tfrecords",
                           [make_bair_example(s.frames, s.cond[:, :4], s.cond[:, 4:]) for s in seqs[start:start + 256]])
        with tarfile.open(tar_path.with_suffix(".tmp"), "w") as tar:
            tar.add(tree.parent, arcname="softmotion30_44k")
        tar_path.with_suffix(".tmp").rename(tar_path)
        shutil.rmtree(work / f"tfrecords-{n}")
    return folders, tar_path


def cpu_seconds() -> float:
    """CPU time of this process and of every worker it has had: workers are children of multiprocessing's
    forkserver, which reaps them, so theirs is in the forkserver's cutime + cstime (/proc/PID/stat)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return total


def main_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def rate(src: Path, fmt: str, workers: int, out: Path, n: int) -> tuple[float, float, float]:
    """(sequences per second of wall time, CPU ms per sequence over all processes, of the main process alone) of
    one conversion, the pool's start included."""
    from toolkit.data.shards.convert import convert

    shutil.rmtree(out, ignore_errors=True)
    cpu, main_cpu, start = cpu_seconds(), main_cpu_seconds(), time.perf_counter()
    data = convert(src, out, fmt=fmt, progress=False, workers=workers)
    seconds, cpu, main_cpu = time.perf_counter() - start, cpu_seconds() - cpu, main_cpu_seconds() - main_cpu
    assert data["splits"]["train"]["count"] == n, data["splits"]
    return n / seconds, 1000 * cpu / n, 1000 * main_cpu / n


def _convert_quietly(src: Path, out: Path, fmt: str) -> None:
    from toolkit.data.shards.convert import convert

    convert(src, out, fmt=fmt, progress=False)


def pair_rate(src: Path, fmt: str, workers: int, out: Path, n: int) -> tuple[float, float, float]:
    """As `rate`, for two independent one-worker conversions run at the same time in two processes (what the
    machine gives two busy processes, whatever the toolkit does); `workers` is 2, the processes."""
    context = multiprocessing.get_context("forkserver")
    outs = [out.with_name(f"{out.name}-{i}") for i in range(workers)]
    for o in outs:
        shutil.rmtree(o, ignore_errors=True)
    cpu, start = cpu_seconds(), time.perf_counter()
    procs = [context.Process(target=_convert_quietly, args=(src, o, fmt)) for o in outs]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    assert all(proc.exitcode == 0 for proc in procs) and all((o / "manifest.json").is_file() for o in outs)
    for o in outs:
        shutil.rmtree(o)
    return workers * n / seconds, 1000 * cpu / (workers * n), float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sequences", type=int, default=400)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workdir", default="/tmp/cvae-convert-bench")
    args = p.parse_args()
    work, n = Path(args.workdir), args.sequences
    work.mkdir(parents=True, exist_ok=True)
    folders, tar_path = make_inputs(work, n)
    variants = {f"{name}, {w} worker{'s' * (w > 1)}": (src, fmt, w, rate)
                for name, src, fmt in (("folders", folders, "folders"), ("BAIR tar", tar_path, "tfrecord"))
                for w in (1, 2)}
    variants["BAIR tar, 2 x 1 at once"] = (tar_path, "tfrecord", 2, pair_rate)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    main_cpu: dict[str, list[float]] = {name: [] for name in variants}
    ratios: dict[str, list[float]] = {name: [] for name in variants}  # vs 1 worker, within the same round
    loads = []
    for r in range(args.rounds + 1):  # round 0 warms up and is not counted
        measured = {name: run(src, fmt, w, work / "out", n) for name, (src, fmt, w, run) in variants.items()}
        if r:
            loads.append(os.getloadavg()[0])
            for name, (value, ms, main_ms) in measured.items():
                rates[name].append(value)
                cpu[name].append(ms)
                main_cpu[name].append(main_ms)
                one = name.replace("2 workers", "1 worker").replace("2 x 1 at once", "1 worker")
                ratios[name].append(value / measured[one][0])
            print(f"round {r}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()),
                  flush=True)
    shutil.rmtree(work / "out", ignore_errors=True)
    print(f"\n{n} sequences (pushing world, 30 frames of 64x64), png, median of {args.rounds} rounds after a warm-up, "
          f"cpu_count {os.cpu_count()}, load average during the rounds {min(loads):.1f}..{max(loads):.1f}")
    print(f"{'source, workers':24s} {'seq/s':>7s} {'vs 1 worker':>12s} {'CPU ms/seq':>11s} {'seq/s per core':>15s} "
          f"{'main CPU ms/seq':>16s}")
    for name in variants:
        ms = statistics.median(cpu[name])
        print(f"{name:24s} {statistics.median(rates[name]):7.1f} {statistics.median(ratios[name]):11.2f}x "
              f"{ms:11.2f} {1000 / ms:15.1f} {statistics.median(main_cpu[name]):16.2f}")


if __name__ == "__main__":
    main()
