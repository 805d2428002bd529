"""Decode workers and model threads for `serve`, decided before the workers fork (before CUDA starts),
from where the model will run: its kind, the device, and onnxruntime's available providers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from core.ort_session import GPU_PROVIDERS, PROVIDERS, available_providers
from core.workers import plan_threads, usable_cpus
from serve.model_file import model_kind


def backend_kind(
    model: str | Path,
    device: torch.device,
    providers: Sequence[str] | None,
    available: Sequence[str] | None = None,
) -> str:
    """'cuda' or 'cpu': where open_backend will run `model`. An ONNX model on a GPU machine whose
    onnxruntime has no GPU provider (the CPU-only wheel) runs on the CPU, and so does its decoding."""
    if device.type != "cuda":
        return "cpu"
    if model_kind(model) != "onnx":
        return "cuda"  # a bundle on the GPU, or a TensorRT engine
    available = available_providers() if available is None else available
    wanted = [PROVIDERS.get(p.strip().lower(), p.strip()) for p in providers] if providers else GPU_PROVIDERS
    return "cuda" if any(p in available and p in GPU_PROVIDERS for p in wanted) else "cpu"


def serve_threads(
    model: str | Path,
    device: torch.device,
    providers: Sequence[str] | None,
    world: int,
    workers: int | None,
    threads: int | None,
) -> tuple[int, int]:
    """(decode workers, model threads) for this process: core.workers.plan_threads on this machine."""
    return plan_threads(usable_cpus(), backend_kind(model, device, providers), world, workers, threads)
