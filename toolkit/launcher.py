"""The arguments of `accelerate launch` on this machine, shared by launch.sh, `cvae sweep local` and the tests.

Without an accelerate config: `recipes/accelerate/cpu.yaml` (2 CPU processes) when no GPU is visible, else one
process per visible GPU (`gpu1_*.yaml` for one, `node8_*.yaml` with `--num_processes N` for several), in bf16
where every GPU supports it and fp16 (with a gradient scaler) where not. Multi-node runs take NNODES,
GPUS_PER_NODE (default: the visible GPUs), MACHINE_RANK, MASTER_ADDR and MASTER_PORT from the environment
(export them on every node: torchrun and SLURM do not set these names); a single-node
run gets a free port, so two trainings on one machine do not collide.

    python -m toolkit.launcher [ACCEL_CONFIG]    # the arguments, one per line (launch.sh reads them)
"""

from __future__ import annotations

import os
import socket
import sys

CONFIGS = "recipes/accelerate"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_workers(limit: int = 8) -> int:
    """Processes for generating and converting the embedded data (launch.sh's first use): the cores this
    process may run on, at most `limit`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, limit)


def machine_config(nodes: int = 1) -> tuple[str, list[str]]:
    """(accelerate config, extra arguments) for the GPUs of this machine, or the CPU; with several nodes always
    a distributed config (one GPU per node is DDP too)."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        return f"{CONFIGS}/cpu.yaml", []
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if nodes > 1:
        return f"{CONFIGS}/multinode_{precision}.yaml", []
    if gpus == 1:
        return f"{CONFIGS}/gpu1_{precision}.yaml", []
    return f"{CONFIGS}/node8_{precision}.yaml", ["--num_processes", str(gpus)]


def launch_args(config: str | None = None, env: dict | None = None) -> list[str]:
    """`accelerate launch` arguments before the program: config, process count, node rank, address, port."""
    env = os.environ if env is None else env
    nodes = int(env.get("NNODES", "1"))
    extra: list[str] = []
    if not config:
        config, extra = machine_config(nodes)
    if not os.path.isfile(config):
        raise FileNotFoundError(f"accelerate config not found: {config}")
    args = ["--config_file", config, *extra]
    if nodes > 1:
        per_node = int(env.get("GPUS_PER_NODE") or _visible_gpus() or 1)
        for name in ("MACHINE_RANK", "MASTER_ADDR"):
            if not env.get(name):
                raise KeyError(f"NNODES={nodes} needs {name} set on every node")
        args = ["--config_file", config, "--num_machines", str(nodes), "--num_processes", str(nodes * per_node),
                "--machine_rank", env["MACHINE_RANK"], "--main_process_ip", env["MASTER_ADDR"],
                "--main_process_port", env.get("MASTER_PORT", "29500")]
    else:
        args += ["--main_process_port", env.get("MASTER_PORT") or str(free_port())]
    return args


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def main(argv: list[str]) -> int:
    try:
        print("\n".join(launch_args(argv[0] if argv else None)))
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
