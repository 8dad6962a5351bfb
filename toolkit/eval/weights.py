"""Pretrained weight files the evaluation metrics load: where each one lives, how it is checked, `cvae weights`.

Location of a file (`resolve`): an explicit path (option or config) > the directory in `$CVAE_WEIGHTS_DIR` >
torch's hub cache, `torch.hub.get_dir()/checkpoints` (`$TORCH_HOME/hub/checkpoints`, by default
`~/.cache/torch/hub/checkpoints`), where torchvision itself looks for the AlexNet backbone.

Checks (`check`): a file that carries the table's file name is taken to be that file and must match it: its full
sha256 where one is published, else what is published. torchvision names its files `name-<first 8 hex of the
sha256>.pth` and checks that prefix (torch.hub's `check_hash`); the full sha256 of `alexnet-owt-7be5be79.pth` was
not found in public sources, so the prefix is what is checked (likewise `vgg16-397923af.pth`). No sha256 of
TATS's `i3d_pretrained_400.pt` was found either; its git blob id is public (the tree of songweige/TATS at
03bbce1, and the same blob in JunyaoHu/common_metrics_on_video_quality at 5f75173, `fvd/videogpt/`), and
`git hash-object` of the file must give it. A file under another name (a user's own conversion, say) is
loaded unverified. Either way its sha256 is recorded (`check`'s record), for reports to say exactly what was
loaded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ToolkitError
from toolkit.fsutil import atomic_path, file_sha256

ENV_DIR = "CVAE_WEIGHTS_DIR"


@dataclass(frozen=True)
class WeightFile:
    """One known weight file: its name, where it comes from, and what identifies it."""

    name: str
    file_name: str
    url: str
    sha256: str | None  # the full sha256 where a public source gives it
    sha256_prefix: str | None  # torchvision's file-name convention: the sha256's first hex digits
    git_blob: str | None  # `git hash-object` of the file, from a public repository's tree
    used_by: str


TABLE: dict[str, WeightFile] = {
    "alexnet": WeightFile(
        "alexnet", "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        sha256=None, sha256_prefix="7be5be79", git_blob=None,
        used_by="LPIPS backbone (torchvision AlexNet IMAGENET1K_V1; toolkit/eval/perceptual.py)"),
    "vgg16": WeightFile(
        "vgg16", "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
        sha256=None, sha256_prefix="397923af", git_blob=None,
        used_by="LPIPS-VGG backbone, act15's (torchvision VGG16 IMAGENET1K_V1; toolkit/eval/perceptual.py)"),
    "i3d": WeightFile(
        "i3d", "i3d_pretrained_400.pt", "https://github.com/songweige/TATS/raw/main/tats/fvd/i3d_pretrained_400.pt",
        sha256=None, sha256_prefix=None, git_blob="a867b87ac3a9097d200598b1d48a1b890d8ec744",
        used_by="FVD: I3D Kinetics-400, converted from TF-Hub i3d-kinetics-400/1 by TATS (toolkit/eval/fvd.py)"),
}


def entry(name: str) -> WeightFile:
    """The table's entry for `name`; ToolkitError for an unknown name."""
    if name not in TABLE:
        raise ToolkitError(f"unknown weight file {name!r}; known: {', '.join(TABLE)}")
    return TABLE[name]


def default_dir() -> Path:
    """`$CVAE_WEIGHTS_DIR` if set, else torch's hub checkpoint cache (honours `$TORCH_HOME`)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve(name: str, override: str | os.PathLike | None = None) -> Path:
    """Path of weight file `name`: `override` (a file, or a directory holding the file) > `$CVAE_WEIGHTS_DIR` >
    torch's hub cache. The file need not exist."""
    file_name = entry(name).file_name
    if override is not None:
        path = Path(override).expanduser()
        return path / file_name if path.is_dir() else path
    return default_dir() / file_name


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    return file_sha256(path)


def git_blob_of(path: str | os.PathLike) -> str:
    """Hex git blob id of a file (`git hash-object`): sha1 of b"blob <size>\\0" + the bytes."""
    h = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def identify(w: WeightFile, path: Path, shown: str) -> tuple[str, str]:
    """(sha256, what was checked) of file `path` as the known file `w`; ToolkitError naming `shown` on a mismatch."""
    sha = sha256_of(path)
    fix = f"delete it and run `cvae weights fetch {w.name}`"
    if w.sha256 is not None:
        if sha != w.sha256:
            raise ToolkitError(f"{shown}: sha256 {sha} is not that of {w.file_name} ({w.sha256}); {fix}")
        return sha, "sha256"
    checks = []
    if w.sha256_prefix is not None:
        if not sha.startswith(w.sha256_prefix):
            raise ToolkitError(f"{shown}: sha256 {sha} does not start with {w.sha256_prefix} as {w.file_name}'s "
                               f"does; {fix}")
        checks.append(f"sha256 prefix {w.sha256_prefix}")
    if w.git_blob is not None:
        blob = git_blob_of(path)
        if blob != w.git_blob:
            raise ToolkitError(f"{shown}: git blob id {blob} is not that of {w.file_name} ({w.git_blob}); {fix}")
        checks.append(f"git blob {w.git_blob[:12]}")
    return sha, " and ".join(checks)


def check(name: str, path: str | os.PathLike) -> dict:
    """Check the file at `path` that is to be loaded as weight file `name` and return its record:
    {"name", "path", "sha256", "verified": bool, "check": what was compared}.

    A file named as the table's file must match it (ToolkitError otherwise); another name is recorded unverified.
    ToolkitError, naming the file and `cvae weights fetch NAME`, if it does not exist.
    """
    w, path = entry(name), Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: {w.file_name} not found ({w.used_by}); `cvae weights fetch {name}` downloads "
                           f"it to {default_dir()}, or give its path")
    if path.name != w.file_name:
        return {"name": name, "path": str(path.resolve()), "sha256": sha256_of(path), "verified": False,
                "check": f"none: not named {w.file_name}"}
    sha, how = identify(w, path, str(path))
    return {"name": name, "path": str(path.resolve()), "sha256": sha, "verified": True, "check": how}


def status(name: str, dest: str | os.PathLike | None = None) -> dict:
    """`check`'s record for `name` at its resolved path, with "present" and, instead of raising, "error"."""
    path = resolve(name, dest)
    record = {"name": name, "path": str(path), "present": path.is_file()}
    if record["present"]:
        try:
            record.update(check(name, path))
        except ToolkitError as e:
            record.update(verified=False, error=str(e))
    return record


def list_weights(dest: str | os.PathLike | None = None) -> list[dict]:
    """`cvae weights list`: print each known file's path and whether it is present and verified."""
    rows = [status(name, dest) for name in TABLE]
    for r in rows:
        if not r["present"]:
            state = "missing"
        elif "error" in r:
            state = "MISMATCH"
        else:
            state = f"verified ({r['check']})" if r["verified"] else "present, unverified"
        print(f"{r['name']:8s} {state:36s} {r['path']}")
        if r.get("sha256"):
            print(f"{'':8s} sha256 {r['sha256']}")
    return rows


def _download(url: str, tmp: Path, label: str, progress: bool) -> None:
    """Stream `url` into `tmp` in 1 MiB blocks; a progress line on stderr; ToolkitError on any network failure."""
    import sys
    import urllib.error
    import urllib.request

    done = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as out:
            total = int(r.headers.get("Content-Length") or 0)
            for block in iter(lambda: r.read(1 << 20), b""):
                out.write(block)
                done += len(block)
                if progress:
                    of = f" of {total / 2**20:.1f}" if total else ""
                    print(f"\r{label}: {done / 2**20:.1f}{of} MiB", end="", file=sys.stderr, flush=True)
    except urllib.error.HTTPError as e:
        raise ToolkitError(f"cannot fetch {label} from {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ToolkitError(f"cannot fetch {label} from {url}: {getattr(e, 'reason', e)}") from None
    finally:
        if progress and done:
            print(file=sys.stderr)


def fetch(names: list[str] | None = None, dest: str | os.PathLike | None = None, base_url: str | None = None,
          progress: bool = True) -> list[dict]:
    """`cvae weights fetch`: download each named weight file (all when `names` is empty) and check it.

    Goes to `dest/FILE` (default: `resolve`'s place); `base_url` fetches `BASE_URL/FILE` instead of the table's
    URL (a mirror). A file already there that passes the check is kept. A download is written atomically: a
    network error or a check mismatch raises ToolkitError and leaves nothing (any previous file stays as it was).
    Returns `check`'s record of each file.
    """
    records = []
    for name in names or list(TABLE):
        w = entry(name)
        path = Path(dest).expanduser() / w.file_name if dest is not None else resolve(name)
        if path.is_file():
            try:
                records.append(check(name, path))
                print(f"{name}: present, {records[-1]['check']}: {path}")
                continue
            except ToolkitError:
                pass  # replaced by a verified download below
        url = f"{base_url.rstrip('/')}/{w.file_name}" if base_url else w.url
        with atomic_path(path) as tmp:
            _download(url, tmp, w.file_name, progress)
            sha, how = identify(w, tmp, f"{w.file_name} from {url}")
        records.append({"name": name, "path": str(path.resolve()), "sha256": sha, "verified": True, "check": how})
        print(f"{name}: fetched, {how}: {path} (sha256 {sha})")
    return records
