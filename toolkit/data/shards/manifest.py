"""`manifest.json`: what a shard directory holds, read from a local directory, an http(s) URL or a `pipe:`.

A shard *location* is either a directory / URL prefix (`shards/pushing`, `http://host/shards/pushing`), with
files at `{location}/{name}`, or a template containing `{name}` (e.g. `pipe:aws s3 cp s3://b/p/{name} -`),
where the manifest itself is read from the template with name = manifest.json (`pipe:aws s3 cp
s3://b/p/manifest.json -`: the manifest is fetched the way the shards are). Files are opened with WebDataset's
`gopen`, which handles local paths, `http(s)://` (via curl) and `pipe:` commands alike; the manifest of a `pipe:`
location is read by running the command here, so a failure names its exit status and what it printed.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from webdataset.gopen import gopen

from toolkit.errors import DataError

MANIFEST_NAME = "manifest.json"
FORMAT = "cvae-video-shards"
VERSION = 1
REQUIRED = ("format", "version", "encoding", "seq_len", "frame_shape", "cond_dim", "splits")


def file_url(location: str, name: str) -> str:
    """URL/path of file `name` at a shard location (directory, URL prefix or `{name}` template)."""
    if "{name}" in location:
        return location.replace("{name}", name)
    return location.rstrip("/") + "/" + name


@dataclass
class Manifest:
    location: str
    data: dict

    @property
    def encoding(self) -> str:
        return self.data["encoding"]

    @property
    def seq_len(self) -> int:
        return int(self.data["seq_len"])

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        return tuple(self.data["frame_shape"])

    @property
    def cond_dim(self) -> int:
        return int(self.data["cond_dim"])

    def split(self, name: str) -> dict:
        splits = self.data["splits"]
        if name not in splits:
            where = file_url(self.location, MANIFEST_NAME)
            raise DataError(f"{where}: no split '{name}' (have: {', '.join(splits) or 'none'})")
        return splits[name]

    def shard_names(self, split: str) -> list[str]:
        return [s["name"] for s in self.split(split)["shards"]]

    def urls(self, split: str) -> list[str]:
        return [file_url(self.location, name) for name in self.shard_names(split)]

    def count(self, split: str) -> int:
        return int(self.split(split)["count"])


def _read_pipe(url: str) -> bytes:
    """The output of a `pipe:` command; DataError with its exit status and last line of stderr when it fails."""
    proc = subprocess.run(url[len("pipe:"):], shell=True, capture_output=True)
    if proc.returncode:
        said = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        raise DataError(f"{url}: cannot read the shard manifest (the command exited with status {proc.returncode}"
                        f"{': ' + said[0] if said else ''})")
    return proc.stdout


def read_manifest(location: str) -> Manifest:
    """Read and check the manifest at a shard location; DataError names the file and the problem."""
    url = file_url(location, MANIFEST_NAME)
    if url.startswith("pipe:"):
        raw = _read_pipe(url)
    else:
        try:
            with gopen(url, "rb") as f:
                raw = f.read()
        except Exception as e:  # gopen raises OSError/IOError/ValueError depending on the scheme
            raise DataError(f"{url}: cannot read the shard manifest ({e})") from None
    if not raw:
        raise DataError(f"{url}: cannot read the shard manifest (empty or unreachable)")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{url}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{url}: expected a JSON object")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise DataError(f"{url}: missing key(s) {', '.join(missing)}")
    if data["format"] != FORMAT or data["version"] != VERSION:
        raise DataError(f"{url}: format {data['format']!r} v{data['version']}, expected {FORMAT!r} v{VERSION}")
    for split, entry in data["splits"].items():
        if not isinstance(entry, dict) or "shards" not in entry or "count" not in entry:
            raise DataError(f"{url}: split '{split}' needs 'shards' and 'count'")
    return Manifest(location=location, data=data)
