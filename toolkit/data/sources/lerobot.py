"""LeRobot v3 datasets (codebase_version v3.x) from a local directory, read with pyarrow and PyAV (the optional
`lerobot` extra), without the lerobot package.

The layout, as lerobot writes it (`lerobot/datasets/utils.py`, `lerobot_dataset.py`, `video_utils.py`):
- `meta/info.json`: codebase_version, fps, features {key: {dtype, shape, names}}, splits {"train": "0:N"}
  (episode index ranges), data_path (`data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet`) and
  video_path (`videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4`);
- `meta/episodes/chunk-*/file-*.parquet`: a row per episode: episode_index, length, data/chunk_index,
  data/file_index and, per video key K, videos/K/chunk_index, videos/K/file_index, videos/K/from_timestamp,
  videos/K/to_timestamp (files hold several episodes);
- the data parquet files: a row per frame: episode_index, frame_index, timestamp (s from the episode's start)
  and the other features (`action`, `observation.state`: fixed-size lists of float32);
- the mp4 files: the episodes of a camera one after another; frame t of an episode is the frame shown at
  `from_timestamp + timestamp[t]` (`video.py`).

A sequence is `seq_len` consecutive frames of one episode of the chosen camera, resized to the model's size, with
cond = the chosen action and state features of the same frames, concatenated; an episode gives the windows starting
at 0, stride, 2*stride, ... that fit in it (shorter episodes give none), keyed `episode_{index:06d}__{start}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from toolkit.data.sequence import IMAGE_SIZE, SEQ_LEN, Sequence, safe_key
from toolkit.data.sources.lerobot_meta import (Resize, episode_splits, feature_dims, read_episodes, read_info,
                                               video_key)
from toolkit.data.sources.video import VideoCursor
from toolkit.errors import DataError, ToolkitError

EXTRA = "lerobot"
INSTALL = "pip install 'cvae-video[lerobot]' (in a clone: pip install -e '.[lerobot]')"


@dataclass
class LeRobotOptions:
    """What `shards convert --format lerobot` makes of a dataset."""
    camera: str | None = None
    """Video feature that becomes the frames (default: the first one in info.json)."""
    action_key: str | None = "action"
    """Feature that becomes the first part of cond (None or '': none)."""
    state_key: str | None = "observation.state"
    """Feature that becomes the second part of cond (None or '': none)."""
    seq_len: int = SEQ_LEN
    """Frames per sequence."""
    stride: int | None = None
    """Frames between the starts of consecutive sequences of an episode (default: seq_len, no overlap)."""
    image_size: int = IMAGE_SIZE
    resize: Resize = "crop"


def require_extra() -> None:
    """ToolkitError with the install command when pyarrow or PyAV is missing."""
    try:
        import av  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise ToolkitError(f"--format lerobot needs the '{EXTRA}' extra (pyarrow and av; {e.name} is missing): "
                           f"{INSTALL}") from None


class LeRobotSource:
    """One dataset directory: its metadata, split into episodes, and the sequences of a list of episodes."""

    def __init__(self, root: str | Path, options: LeRobotOptions) -> None:
        require_extra()
        self.root, self.options = Path(root), options
        self.stride = options.stride or options.seq_len
        if options.seq_len < 2 or self.stride < 1:
            raise ToolkitError(f"--seq-len must be >= 2 and --stride >= 1, got {options.seq_len} and {self.stride}")
        self.info = read_info(self.root)
        self.camera = video_key(self.info, options.camera, self.root)
        keys = [k for k in (options.action_key, options.state_key) if k]
        self.cond = feature_dims(self.info, keys, self.root)
        self.episodes = read_episodes(self.root, self.camera)
        self.split_episodes = episode_splits(self.info, self.episodes, self.root)
        self._table: tuple[Path, object] | None = None
        self._cursor: VideoCursor | None = None

    def windows(self, length: int) -> range:
        return range(0, length - self.options.seq_len + 1, self.stride)

    def count(self, episodes: list[dict]) -> int:
        return sum(len(self.windows(ep["length"])) for ep in episodes)

    def sequences(self, split: str) -> Iterator[Sequence]:
        """The sequences of a split's episodes, episode by episode."""
        L = self.options.seq_len
        try:
            for ep in self.split_episodes[split]:
                starts = self.windows(ep["length"])
                if not starts:
                    continue
                frames, cond = self.episode(ep)
                index = ep["episode_index"]
                for s in starts:
                    yield Sequence(key=safe_key(f"episode_{index:06d}", s), frames=frames[s:s + L],
                                   cond=cond[s:s + L], source=f"{self.root} episode {index} frames {s}..{s + L - 1}")
        finally:
            if self._cursor is not None:
                self._cursor.close()
                self._cursor = None

    def episode(self, ep: dict) -> tuple[np.ndarray, np.ndarray]:
        """All frames of an episode, uint8 [n, S, S, 3], and its cond, float32 [n, D]."""
        index, n = ep["episode_index"], ep["length"]
        path = self.root / self.info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                                         file_index=ep["data/file_index"])
        times, cond = self._rows(path, index, n)
        video = self.root / self.info["video_path"].format(video_key=self.camera,
                                                           chunk_index=ep[f"videos/{self.camera}/chunk_index"],
                                                           file_index=ep[f"videos/{self.camera}/file_index"])
        times = times + float(ep[f"videos/{self.camera}/from_timestamp"])
        if self._cursor is None or self._cursor.path != video or not self._cursor.can_reach(times[0]):
            if self._cursor is not None:
                self._cursor.close()
            self._cursor = VideoCursor(video)
        o = self.options
        return self._cursor.frames_at(times, o.image_size, o.resize, f"episode {index}"), cond

    def _rows(self, path: Path, index: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(timestamps float64 [n], cond float32 [n, D]) of episode `index` from a data parquet file."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if self._table is None or self._table[0] != path:
            columns = ["episode_index", "frame_index", "timestamp", *(k for k, _, _ in self.cond)]
            try:
                missing = [c for c in columns if c not in pq.read_schema(path).names]
                if missing:
                    raise DataError(f"{path}: no column(s) {', '.join(missing)}")
                self._table = (path, pq.read_table(path, columns=columns))
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"{path}: not a readable parquet file ({e})") from None
        rows = self._table[1].filter(pc.equal(self._table[1]["episode_index"], index)).sort_by("frame_index")
        frame_index = rows["frame_index"].to_numpy()
        if len(rows) != n or not np.array_equal(frame_index, np.arange(n)):
            raise DataError(f"{path}: episode {index} has {len(rows)} rows with frame_index "
                            f"{_span(frame_index)}, meta/episodes says {n} frames (0..{n - 1})")
        times = rows["timestamp"].to_numpy().astype(np.float64)
        parts = [_matrix(rows[key], key, dim, f"{path} episode {index}") for key, dim, _ in self.cond]
        cond = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.float32)
        return times, cond

    def mapping(self) -> dict:
        """What the manifest records about the conversion: the features used, the cutting, the fps."""
        o, feature = self.options, self.info["features"][self.camera]
        short = sum(1 for eps in self.split_episodes.values() for ep in eps if not self.windows(ep["length"]))
        return {"codebase_version": self.info["codebase_version"], "fps": self.info["fps"], "camera": self.camera,
                "camera_shape": list(feature.get("shape") or []),
                "cond": [{"key": k, "dim": d, "names": names} for k, d, names in self.cond],
                "seq_len": o.seq_len, "stride": self.stride, "image_size": o.image_size, "resize": o.resize,
                "key": "episode_{episode_index:06d}__{start_frame}",
                "episodes": {s: len(eps) for s, eps in self.split_episodes.items()},
                "episodes_shorter_than_seq_len": short}


def _span(values: np.ndarray) -> str:
    return f"{values.min()}..{values.max()}" if len(values) else "none"


def _matrix(column, key: str, dim: int, where: str) -> np.ndarray:
    """A numeric or list column of n rows as finite float32 [n, dim]."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = column.combine_chunks()
    if array.null_count:
        raise DataError(f"{where}: feature '{key}' has {array.null_count} missing value(s)")
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(array.type):
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths.min() != dim or lengths.max() != dim):
            raise DataError(f"{where}: feature '{key}' has rows of {lengths.min()}..{lengths.max()} values, "
                            f"info.json says {dim}")
        array = array.flatten()
    elif dim != 1:
        raise DataError(f"{where}: feature '{key}' is a {array.type} column, info.json says {dim} values per frame")
    try:
        values = array.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), dim)
    except (ValueError, TypeError, pa.ArrowException) as e:
        raise DataError(f"{where}: feature '{key}' is not numeric ({e})") from None
    if not np.isfinite(values).all():
        raise DataError(f"{where}: feature '{key}' has a non-finite value")
    return values
