"""The W&B run of a training, driven through accelerate's tracker (main process only).

`wandb.mode: auto` picks `online` when an API key is configured and the W&B host answers, else `offline` (runs
are written under RUN_DIR/wandb/ and can be uploaded later with `wandb sync`). The run id is kept in
RUN_DIR/wandb_run_id so a resumed training continues the same W&B run; under a sweep agent the agent's run id
(WANDB_RUN_ID) is used.
"""

from __future__ import annotations

import netrc
import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

from toolkit.config import WandbConfig
from toolkit.fsutil import atomic_write_text

RUN_ID_FILE = "wandb_run_id"


def resolve_wandb_mode(mode: str, timeout: float = 2.0) -> str:
    """`auto` -> online/offline; WANDB_MODE in the environment wins over `auto` (as wandb itself does)."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled", "dryrun", "run"):
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    if not os.environ.get("WANDB_API_KEY"):
        try:
            if netrc.netrc().authenticators(host) is None:
                return "offline"
        except (OSError, netrc.NetrcParseError):
            return "offline"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return "online"
    except OSError:
        return "offline"


def new_run_id() -> str:
    return os.environ.get("WANDB_RUN_ID") or uuid.uuid4().hex[:8]


def stored_run_id(run_dir: Path) -> str:
    path = Path(run_dir) / RUN_ID_FILE
    return path.read_text().strip() if path.is_file() else ""


def store_run_id(run_dir: Path, run_id: str) -> None:
    atomic_write_text(Path(run_dir) / RUN_ID_FILE, run_id + "\n")


def init_wandb(accelerator, cfg: WandbConfig, run_dir: Path, run_id: str, mode: str, config: dict) -> None:
    """Start (or, with a stored run id, continue) the W&B run through accelerate's tracker."""
    import wandb

    init = {"id": run_id, "resume": "allow", "dir": str(run_dir), "mode": mode, "name": cfg.name or run_dir.name,
            "tags": cfg.tags, "entity": cfg.entity or None, "settings": wandb.Settings(quiet=True)}
    accelerator.init_trackers(cfg.project, config=config, init_kwargs={"wandb": init})


