"""`accelerate launch` command lines for tests: a free port, and N gloo processes on the CPU.

`--cpu --num_processes 2` starts ONE process in accelerate 1.x (its CPU launcher wants mpirun for more):
--multi_gpu takes the torchrun launcher instead, and the script's own CPU choice (ACCELERATE_USE_CPU=1,
Accelerator(cpu=True), serve's --device cpu) makes that a gloo group on the CPU.
"""

from __future__ import annotations

import socket
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *args]


def multi_process_flags(processes: int) -> list[str]:
    """The launcher's flags for `processes` torchrun workers on this machine, on a free port; every setting
    explicit, so the launcher prints no "defaults were used" warnings."""
    return [
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]


def cpu_processes(processes: int, script: object, *args: object) -> list[str]:
    """`accelerate launch script args...` as `processes` workers (see the module's note on the CPU)."""
    return accelerate_launch(*multi_process_flags(processes), str(script), *map(str, args))
