"""launch.sh: the topology it resolves from plain and SLURM variables, seen through --dry-run, and real launches."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launchers import free_port
from tests.proctree import run_trees

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch.sh"
TOPOLOGY_VARS = (
    "NUM_NODES",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GPUS_PER_NODE",
    "CUDA_VISIBLE_DEVICES",
    "LAUNCH_DRY_RUN",
    "ACCELERATE_CONFIG",
)


def fake_tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """The caller's environment without any topology or SLURM variable, a fake bin/ first on PATH, no GPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "nvidia-smi", "echo 'NVIDIA-SMI has failed: no driver' >&2; exit 9")
    clean = {k: v for k, v in os.environ.items() if k not in TOPOLOGY_VARS and not k.startswith("SLURM_")}
    return {**clean, "PATH": f"{bin_dir}{os.pathsep}{clean['PATH']}", "FAKE_BIN": str(bin_dir)}


def launch(env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LAUNCH), *args], env={**env, **extra}, capture_output=True, text=True, timeout=60, check=False
    )


def dry_run(env: dict[str, str], **extra: str) -> tuple[str, dict, list[str]]:
    """(topology line, accelerate flags, script + its args) of `./launch.sh --dry-run train/main.py ...`."""
    res = launch(
        env, "--dry-run", "train/main.py", "--config", "configs/my recipe.yaml", "train.epochs=3", **extra
    )
    assert res.returncode == 0, res.stderr
    topology, command = res.stdout.splitlines()
    words = shlex.split(command)
    start = words.index("accelerate")
    assert words[start + 1] == "launch"
    flags, i = {"env": words[:start]}, start + 2
    while words[i].startswith("--"):
        takes_value = (
            i + 1 < len(words) and not words[i + 1].startswith("--") and words[i + 1] != "train/main.py"
        )
        flags[words[i]] = words[i + 1] if takes_value else True
        i += 2 if takes_value else 1
    return topology, flags, words[i:]


def topology_of(flags: dict) -> tuple:
    return tuple(
        flags.get(k)
        for k in (
            "--num_machines",
            "--machine_rank",
            "--main_process_ip",
            "--main_process_port",
            "--num_processes",
        )
    )


# ─── defaults ──────────────────────────────────────────────────────────────────────────────────


def test_default_is_one_cpu_process_on_this_node_and_the_script_args_pass_through_verbatim(env):
    topology, flags, script = dry_run(env)
    assert topology_of(flags) == ("1", "0", "127.0.0.1", "29500", "1")
    assert flags.get("--cpu") is True and "--multi_gpu" not in flags
    assert flags.get("--quiet") is True  # a user error is its one line, not the launcher's traceback too
    assert script == ["train/main.py", "--config", "configs/my recipe.yaml", "train.epochs=3"]
    assert topology.startswith("launch: nodes=1 node_rank=0 device=cpu")


def test_all_local_gpus_counted_by_nvidia_smi_become_processes(env):
    fake_tool(
        Path(env["FAKE_BIN"]),
        "nvidia-smi",
        '[[ $1 == -L ]] || exit 1\nfor i in 0 1 2; do echo "GPU $i: NVIDIA H100 (UUID: GPU-$i)"; done',
    )
    _, flags, _ = dry_run(env)
    assert flags["--num_processes"] == "3" and flags["--multi_gpu"] is True and "--cpu" not in flags


def test_a_single_gpu_runs_one_process_without_multi_gpu_or_cpu(env):
    _, flags, _ = dry_run(env, GPUS_PER_NODE="1")
    assert flags["--num_processes"] == "1" and "--multi_gpu" not in flags and "--cpu" not in flags


def test_launch_dry_run_variable_equals_the_flag(env):
    res = launch(env, "train/main.py", LAUNCH_DRY_RUN="1")
    assert res.returncode == 0 and "accelerate launch" in res.stdout.splitlines()[1]


# ─── plain variables ───────────────────────────────────────────────────────────────────────────


def test_plain_variables_give_nodes_rank_master_and_nodes_times_gpus_processes(env):
    topology, flags, _ = dry_run(
        env, NUM_NODES="3", NODE_RANK="2", MASTER_ADDR="10.1.2.3", MASTER_PORT="12345", GPUS_PER_NODE="8"
    )
    assert topology_of(flags) == ("3", "2", "10.1.2.3", "12345", "24")
    assert flags["--multi_gpu"] is True
    assert topology == (
        "launch: nodes=3 node_rank=2 device=gpu procs_per_node=8 processes=24 master=10.1.2.3:12345"
    )


def test_multi_node_without_gpus_runs_one_gloo_process_per_node(env):
    _, flags, _ = dry_run(env, NUM_NODES="2", NODE_RANK="0", MASTER_ADDR="head")
    assert flags["--num_processes"] == "2" and flags["--multi_gpu"] is True and "--cpu" not in flags
    assert flags["env"] == ["env", "ACCELERATE_USE_CPU=true"]  # without it accelerate would pick NCCL


def test_accelerate_config_adds_config_file(env):
    _, flags, _ = dry_run(env, ACCELERATE_CONFIG="configs/accelerate/multi_gpu.yaml")
    assert flags["--config_file"] == "configs/accelerate/multi_gpu.yaml"


# ─── SLURM ─────────────────────────────────────────────────────────────────────────────────────

SLURM = {
    "SLURM_NNODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NODELIST": "gpu-[07-08]",
    "SLURM_GPUS_ON_NODE": "4",
}


def fake_scontrol(env: dict[str, str]) -> None:
    fake_tool(
        Path(env["FAKE_BIN"]),
        "scontrol",
        '[[ "$*" == "show hostnames gpu-[07-08]" ]] || { echo "bad call: $*" >&2; exit 1; }\n'
        'printf "gpu-07\\ngpu-08\\n"',
    )


def test_slurm_variables_and_scontrol_give_the_topology(env):
    fake_scontrol(env)
    _, flags, _ = dry_run(env, **SLURM)
    assert topology_of(flags) == ("2", "1", "gpu-07", "29500", "8")
    assert flags["--multi_gpu"] is True


def test_slurm_gpus_per_node_with_a_gpu_type_is_read_as_its_count(env):
    fake_scontrol(env)
    slurm = {k: v for k, v in SLURM.items() if k != "SLURM_GPUS_ON_NODE"}
    _, flags, _ = dry_run(env, **slurm, SLURM_GPUS_PER_NODE="a100:2")
    assert flags["--num_processes"] == "4"


def test_plain_variables_win_over_slurm(env):
    fake_scontrol(env)
    _, flags, _ = dry_run(env, **SLURM, MASTER_ADDR="10.9.9.9", GPUS_PER_NODE="2", NODE_RANK="0")
    assert topology_of(flags) == ("2", "0", "10.9.9.9", "29500", "4")


# ─── refusals ──────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"NUM_NODES": "2"}, "MASTER_ADDR is not set"),
        ({"NUM_NODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h"}, "NODE_RANK 2 is out of range for 2 nodes"),
        ({"GPUS_PER_NODE": "four"}, "GPUS_PER_NODE must be a whole number"),
        ({"NUM_NODES": "0"}, "NUM_NODES must be at least 1"),
    ],
)
def test_inconsistent_topology_is_one_error_line_and_exit_2(env, extra, message):
    res = launch(env, "--dry-run", "train/main.py", **extra)
    assert res.returncode == 2
    assert res.stderr.startswith(f"error: {message}") and len(res.stderr.splitlines()) == 1
    assert "accelerate" not in res.stdout


def test_missing_script_is_an_error(env):
    res = launch(env, "--dry-run")
    assert res.returncode == 2 and "no script given" in res.stderr


# ─── real launches (CPU, gloo) ─────────────────────────────────────────────────────────────────

# Two nodes join in ~10 s alone and ~40 s on the loaded 2-core CI box. A node whose worker dies makes the
# other node's torchrun wait out its 300 s exit barrier: the deadline turns that into a fast failure.
DEADLINE_S = 150

PROBE = """
import sys, torch
from accelerate import Accelerator
acc = Accelerator()
ranks = acc.gather(torch.tensor([acc.process_index])).tolist()
print(f"rank={acc.process_index} world={acc.num_processes} ranks={ranks} args={sys.argv[1:]}", flush=True)
acc.end_training()  # a gloo group left alive at interpreter exit aborts the process
"""


@pytest.fixture
def probe(tmp_path, env) -> Path:
    env.update(OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    (tmp_path / "probe.py").write_text(PROBE)
    return tmp_path / "probe.py"


@pytest.mark.slow
def test_two_nodes_on_localhost_join_one_process_group(env, probe, tmp_path):
    node = {"NUM_NODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    runs = run_trees(
        [
            ([str(LAUNCH), str(probe), "a", "b c"], {"env": {**env, **node, "NODE_RANK": str(rank)}})
            for rank in (0, 1)
        ],
        timeout=DEADLINE_S,
    )
    assert [r.returncode for r in runs] == [0, 0], "\n---\n".join(
        r.stdout[-3000:] + r.stderr[-3000:] for r in runs
    )
    assert "rank=0 world=2 ranks=[0, 1] args=['a', 'b c']" in runs[0].stdout
    assert "rank=1 world=2 ranks=[0, 1] args=['a', 'b c']" in runs[1].stdout
    assert not any("terminate called" in r.stderr for r in runs)
