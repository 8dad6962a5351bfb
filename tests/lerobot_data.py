"""A small LeRobot v3 dataset written the way lerobot 0.4.4 writes one (for the tests; pyarrow + PyAV only).

As `LeRobotDataset.save_episode` does: each episode is encoded to its own mp4 (libsvtav1, yuv420p, g=2, crf=30,
preset 12: `video_utils.encode_video_frames`), the first episode of a file is moved into place and the next ones
are appended with ffmpeg's concat demuxer without re-encoding (`concatenate_video_files`); an episode's
`from_timestamp` is the previous one's `to_timestamp`, which adds the episode video's duration
(`get_video_duration_in_s`). The frames of an episode go into the data parquet of the current file (snappy), one
row each, with the default features (timestamp = frame_index / fps, frame_index, episode_index, index,
task_index). Files hold `per_file` episodes (lerobot rotates by size; the layout is the same), and the file index
wraps into the next chunk after `chunks_size` files. The episode table is split over two parquet files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1's banner and settings go to stderr otherwise: errors only


def encode_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libsvtav1", fps, options={"g": "2", "crf": "30", "preset": "12"})
        stream.pix_fmt, stream.width, stream.height = "yuv420p", frames.shape[2], frames.shape[1]
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def duration_s(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.duration is not None:
            return float(stream.duration * stream.time_base)
        return float(container.duration / av.time_base)


def concatenate(first: Path, second: Path, work: Path) -> None:
    """Append `second` to `first` with the concat demuxer and stream copy (no re-encoding)."""
    listing = work / "list.ffconcat"
    listing.write_text(f"ffconcat version 1.0\nfile '{first.resolve()}'\nfile '{second.resolve()}'\n")
    tmp = work / "concat.mp4"
    with av.open(str(listing), "r", format="concat", options={"safe": "0"}) as src, \
            av.open(str(tmp), "w", options={"movflags": "faststart"}) as dst:
        streams = {}
        for s in src.streams:
            if s.type == "video":
                streams[s.index] = dst.add_stream_from_template(template=s, opaque=True)
                streams[s.index].time_base = s.time_base
        for packet in src.demux():
            if packet.stream.index in streams and packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    shutil.move(tmp, first)


def _features(cameras: dict, action_dim: int, state_dim: int, fps: int) -> dict:
    features = {key: {"dtype": "video", "shape": list(frames[0].shape[1:]), "names": ["height", "width", "channels"],
                      "info": {"video.height": frames[0].shape[1], "video.width": frames[0].shape[2],
                               "video.codec": "av1", "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                               "video.fps": fps, "video.channels": 3, "has_audio": False}}
                for key, frames in cameras.items()}
    features["observation.state"] = {"dtype": "float32", "shape": [state_dim],
                                     "names": [f"joint_{i}" for i in range(state_dim)]}
    features["action"] = {"dtype": "float32", "shape": [action_dim], "names": [f"motor_{i}" for i in range(action_dim)]}
    for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                        ("index", "int64"), ("task_index", "int64")):
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    return features


def _data_table(episode: int, first_index: int, state: np.ndarray, action: np.ndarray, fps: int) -> pa.Table:
    n = len(action)
    return pa.table({
        "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.ravel(), pa.float32()), state.shape[1]),
        "action": pa.FixedSizeListArray.from_arrays(pa.array(action.ravel(), pa.float32()), action.shape[1]),
        "timestamp": pa.array(np.arange(n, dtype=np.float32) / fps, pa.float32()),
        "frame_index": pa.array(np.arange(n), pa.int64()), "episode_index": pa.array(np.full(n, episode), pa.int64()),
        "index": pa.array(np.arange(first_index, first_index + n), pa.int64()),
        "task_index": pa.array(np.zeros(n, np.int64), pa.int64())})


def write_dataset(root: Path, cameras: dict[str, list[np.ndarray]], actions: list[np.ndarray],
                  states: list[np.ndarray], fps: int = 10, per_file: int = 2, chunks_size: int = 2,
                  splits: dict | None = None) -> list[dict]:
    """Episodes e = 0.. of frames cameras[key][e] (uint8 [n, H, W, 3]), actions[e] [n, A], states[e] [n, S].
    Returns the episode table's rows."""
    root, work = Path(root), Path(root) / "tmp"
    work.mkdir(parents=True)
    rows, writer, total = [], None, 0
    for e, (action, state) in enumerate(zip(actions, states)):
        chunk, file = divmod(e // per_file, chunks_size)
        first = e % per_file == 0
        path = root / DATA.format(chunk_index=chunk, file_index=file)
        table = _data_table(e, total, state, action, fps)
        if first:
            if writer is not None:
                writer.close()
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(path, schema=table.schema, compression="snappy", use_dictionary=True)
        writer.write_table(table)
        row = {"episode_index": e, "tasks": ["push the block"], "length": len(action), "data/chunk_index": chunk,
               "data/file_index": file, "dataset_from_index": total, "dataset_to_index": total + len(action)}
        for key, episodes in cameras.items():
            episode_mp4, video = work / "episode.mp4", root / VIDEO.format(video_key=key, chunk_index=chunk,
                                                                           file_index=file)
            encode_mp4(episode_mp4, episodes[e], fps)
            start = 0.0 if first else rows[-1][f"videos/{key}/to_timestamp"]
            end = start + duration_s(episode_mp4)
            if first:
                video.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(episode_mp4, video)
            else:
                concatenate(video, episode_mp4, work)
            row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                        f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": end})
        row.update({"stats/action/mean": action.mean(0).tolist(), "meta/episodes/chunk_index": 0,
                    "meta/episodes/file_index": int(e >= len(actions) // 2)})
        rows.append(row)
        total += len(action)
    writer.close()
    half = len(rows) // 2
    for index, part in enumerate((rows[:half], rows[half:])):
        path = root / EPISODES.format(chunk_index=0, file_index=index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part), path, compression="snappy")
    pq.write_table(pa.table({"task_index": [0], "task": ["push the block"]}), root / "meta" / "tasks.parquet")
    info = {"codebase_version": "v3.0", "robot_type": "test_arm", "total_episodes": len(rows), "total_frames": total,
            "total_tasks": 1, "chunks_size": chunks_size, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
            "fps": fps, "splits": splits or {"train": f"0:{len(rows)}"}, "data_path": DATA, "video_path": VIDEO,
            "features": _features(cameras, actions[0].shape[1], states[0].shape[1], fps)}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    shutil.rmtree(work)
    return rows
