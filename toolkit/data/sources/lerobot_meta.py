"""A LeRobot v3 dataset's metadata: `meta/info.json` (format, fps, features, path templates, splits) and the
episode table `meta/episodes/chunk-*/file-*.parquet`, checked, with DataErrors naming the file and the key.
Imports only the standard library at first (the CLI reads `RESIZE` from here).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from toolkit.errors import DataError

INFO = "meta/info.json"
EPISODES = "meta/episodes"
INFO_KEYS = ("codebase_version", "fps", "features", "data_path", "video_path")
EPISODE_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index")
VIDEO_COLUMNS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")
SPLIT_NAMES = {"val": "validate", "validation": "validate"}
"""LeRobot split names with another name here (the toolkit's validation split is `validate`)."""
Resize = Literal["crop", "stretch"]
RESIZE: tuple[Resize, ...] = ("crop", "stretch")
"""How frames become square: crop, the largest centred square, resized (keeps the aspect ratio); stretch, the
whole frame resized (`video.resize_frame`)."""
NUMERIC = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")


def read_info(root: Path) -> dict:
    """`meta/info.json`, checked: a v3 dataset with fps, features and the data and video path templates."""
    path = root / INFO
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory not found")
    try:
        info = json.loads(path.read_text())
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); is {root} a LeRobot dataset?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    missing = [k for k in INFO_KEYS if not isinstance(info, dict) or k not in info]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
    version = str(info["codebase_version"])
    if not version.startswith("v3."):
        raise DataError(f"{path}: codebase_version {version}, this reader reads LeRobot v3 datasets (convert "
                        f"older ones with lerobot's convert_dataset_v21_to_v30)")
    if not isinstance(info["fps"], (int, float)) or info["fps"] <= 0 or not isinstance(info["features"], dict):
        raise DataError(f"{path}: fps must be a positive number and features an object")
    return info


def video_key(info: dict, camera: str | None, root: Path) -> str:
    """The camera feature to read: `camera`, or the first feature of dtype video."""
    videos = [k for k, f in info["features"].items() if isinstance(f, dict) and f.get("dtype") == "video"]
    if camera is None:
        if not videos:
            raise DataError(f"{root / INFO}: no feature of dtype 'video' (cameras stored as images in the "
                            f"parquet files are not read)")
        return videos[0]
    if camera not in info["features"]:
        raise DataError(f"{root / INFO}: no feature '{camera}' (video features: {', '.join(videos) or 'none'})")
    if camera not in videos:
        dtype = info["features"][camera].get("dtype")
        raise DataError(f"{root / INFO}: feature '{camera}' has dtype {dtype!r}, the camera must be a 'video' "
                        f"feature (video features: {', '.join(videos) or 'none'})")
    return camera


def feature_dims(info: dict, keys: list[str], root: Path) -> list[tuple[str, int, object]]:
    """(key, values per frame, names) of each cond feature: numeric, of shape [n]."""
    out = []
    for key in keys:
        feature = info["features"].get(key)
        if not isinstance(feature, dict):
            numeric = [k for k, f in info["features"].items() if isinstance(f, dict) and f.get("dtype") in NUMERIC]
            raise DataError(f"{root / INFO}: no feature '{key}' (numeric features: {', '.join(numeric)})")
        shape = feature.get("shape")
        if feature.get("dtype") not in NUMERIC or not isinstance(shape, list) or len(shape) != 1:
            raise DataError(f"{root / INFO}: feature '{key}' is {feature.get('dtype')} of shape {shape}; cond "
                            f"features must be numeric vectors (shape [n])")
        out.append((key, int(shape[0]), feature.get("names")))
    return out


def read_episodes(root: Path, camera: str) -> list[dict]:
    """The rows of the episode table that locate each episode's data and video, sorted by episode_index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((root / EPISODES).glob("*/*.parquet"))
    if not files:
        raise DataError(f"{root / EPISODES}: no chunk-*/file-*.parquet episode files")
    columns = [*EPISODE_COLUMNS, *(f"videos/{camera}/{c}" for c in VIDEO_COLUMNS)]
    rows: list[dict] = []
    for path in files:
        try:
            missing = [c for c in columns if c not in pq.read_schema(path).names]
            if missing:
                raise DataError(f"{path}: no column(s) {', '.join(missing)}")
            rows += pq.read_table(path, columns=columns).to_pylist()
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
    rows.sort(key=lambda r: r["episode_index"])
    for before, row in zip(rows, rows[1:]):
        if before["episode_index"] == row["episode_index"]:
            raise DataError(f"{root / EPISODES}: episode {row['episode_index']} is listed twice")
    bad = [r["episode_index"] for r in rows if any(r[c] is None for c in columns) or r["length"] < 1]
    if bad:
        raise DataError(f"{root / EPISODES}: episode {bad[0]} has a missing value or no frames")
    return rows


def episode_splits(info: dict, episodes: list[dict], root: Path) -> dict[str, list[dict]]:
    """Split -> its episodes, from info.json's `splits` ({"train": "0:40", "test": "40:50"}: episode index ranges,
    end excluded; none: every episode is train). Splits in `folders.find_splits` order."""
    from toolkit.data.sources.folders import SPLIT_ORDER

    by_index = {ep["episode_index"]: ep for ep in episodes}
    ranges = info.get("splits") or {"train": f"0:{max(by_index) + 1}"}
    out: dict[str, list[dict]] = {}
    for name, spec in ranges.items():
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(spec))
        if not match:
            raise DataError(f"{root / INFO}: split '{name}' is {spec!r}, expected 'start:end' episode indices")
        start, end = int(match.group(1)), int(match.group(2))
        absent = [i for i in range(start, end) if i not in by_index]
        if absent:
            raise DataError(f"{root / INFO}: split '{name}' holds episode {absent[0]}, which {root / EPISODES} "
                            f"does not list")
        out.setdefault(SPLIT_NAMES.get(name, name), []).extend(by_index[i] for i in range(start, end))
    names = [s for s in SPLIT_ORDER if s in out] + sorted(s for s in out if s not in SPLIT_ORDER)
    return {s: out[s] for s in names}
