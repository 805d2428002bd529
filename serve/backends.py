"""Model backends behind one call: uint8 [N, 3, crop, crop] → float32 logits [N, classes] on the CPU
(`backend(x)`), or left where the model made them, not waited for (`backend.forward(x)`).

The model file says which backend is natural (bundle folder → torch, model.onnx → onnxruntime,
model.engine → TensorRT); labels and preprocessing always come from the file's own record.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from core.bundle import BundleRecord, load_bundle
from core.errors import UserError
from core.model_record import ONNX_INPUT, ONNX_OUTPUT, read_onnx_record
from core.models import head_module
from core.ort_session import (
    GPU_PROVIDERS,
    PROVIDERS,
    available_providers,
    open_session,
    provider_names,
    provider_options,
)
from core.preprocess import WithPreprocessing
from core.workers import usable_cpus
from serve.checks import RECORDS, check_model
from serve.model_file import model_kind


class Backend(Protocol):
    device: torch.device  # where input batches should live
    description: str  # printed at start: what runs, on what

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def forward(self, images: torch.Tensor) -> torch.Tensor: ...


def load_record(path: str | Path) -> BundleRecord:
    """The model's own record (labels, display names, preprocessing), without loading weights."""
    return RECORDS[model_kind(path)](Path(path))


def resolve_device(device: str, state_device: torch.device | None = None) -> torch.device:
    """auto → this process's GPU (cuda:<local rank> under accelerate launch) when there is one, else CPU."""
    if device == "cpu":
        return torch.device("cpu")
    if device in ("auto", "cuda"):
        if torch.cuda.is_available():
            return (
                state_device
                if state_device is not None and state_device.type == "cuda"
                else torch.device("cuda")
            )
        if device == "cuda":
            raise UserError("--device cuda asked for, but torch sees no CUDA GPU here; use --device cpu")
        return torch.device("cpu")
    raise UserError(f"unknown --device {device!r}; valid: auto, cuda, cpu")


def default_threads(workers: int, world: int = 1) -> int:
    """Model threads: this process's share of the usable CPUs left after its decode workers, at least 1."""
    return max(1, usable_cpus() // max(1, world) - workers)


def default_batch_size(device: torch.device) -> int:
    """Images per model call where the user gave none: a GPU needs big batches to be busy."""
    return 256 if device.type == "cuda" else 32


def open_backend(
    model: str | Path,
    device: torch.device,
    providers: Sequence[str] | None = None,
    allow_cpu: bool = False,
    threads: int | None = None,
) -> Backend:
    """The model file's own backend (a bundle → torch, .onnx → onnxruntime, .engine → TensorRT), checked
    against its record. `threads`: intra-op threads for torch (process-wide) and onnxruntime; None leaves
    both as they are."""
    kind = model_kind(model)
    if providers and kind != "onnx":
        raise UserError(f"onnxruntime providers apply to a model.onnx only, not {model} (a {kind} model)")
    if threads:
        torch.set_num_threads(threads)
    return check_model(OPENERS[kind](Path(model), device, providers, allow_cpu, threads), model, kind)


# ─── torch: the bundle itself ─────────────────────────────────────────────────────────────────


class TorchBackend:
    def __init__(self, bundle: Path, device: torch.device):
        model, record = load_bundle(bundle, map_location=device)
        self.record = record  # check_model's record: no second read
        self.net = WithPreprocessing(model, record.preprocess).to(device).eval()
        self.temperature = record.temperature  # exported files have it folded in; the bundle applies it here
        self.device = device
        gpu = device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float16
        self.memory_format = torch.channels_last if gpu else torch.contiguous_format
        if gpu:
            self.net = self.net.to(memory_format=torch.channels_last)
        precision = str(self.amp_dtype).replace("torch.", "") if gpu else "fp32"
        self.description = f"torch {record.arch} on {device} ({precision})"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images).cpu()

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.device.type == "cuda"):
            logits = self.net(x).float()
        return logits if self.temperature == 1.0 else logits / self.temperature

    def enable_features(self) -> None:
        """--embeddings: keep the classifier head's input (the penultimate features) of every forward."""
        head_module(self.net.model).register_forward_pre_hook(self._keep_features)

    def _keep_features(self, _module, inputs) -> None:
        self._features = inputs[0]

    def take_features(self):
        """The last forward's features on the host (float32 numpy), or None when not enabled."""
        features, self._features = getattr(self, "_features", None), None
        return None if features is None else features.float().flatten(1).cpu().numpy()


def _open_torch(model: Path, device: torch.device, providers, allow_cpu, threads) -> Backend:
    return TorchBackend(model, device)


# ─── onnxruntime ──────────────────────────────────────────────────────────────────────────────


def choose_providers(
    requested: Sequence[str] | None, device: torch.device, allow_cpu: bool, available: list[str]
) -> list[str]:
    """The execution providers to ask for, in priority order.

    Default on a GPU: CUDA (TensorRT EP only when named: it builds an engine at every start, and
    model.engine is the TensorRT route); CPU joins it only with --allow-cpu. Without a CUDA provider (the
    common CPU-only wheel) the model runs on the CPU, and so does decoding; the start line says so.
    """
    if requested:
        return provider_names(requested, available)
    if device.type == "cuda" and PROVIDERS["cuda"] in available:
        return [PROVIDERS["cuda"]] + ([PROVIDERS["cpu"]] if allow_cpu else [])
    return [PROVIDERS["cpu"]]


def gpu_index(device: torch.device) -> int:
    """This process's GPU: cuda:<local rank> under accelerate launch, else the current device."""
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if torch.cuda.is_available() else int(os.environ.get("LOCAL_RANK", 0))


PRECISIONS = ("fp32", "fp16", "int8")


def onnx_precision(model: Path, facts: object) -> str:
    """fp32 / fp16 / int8 from the export facts (model.fp16.onnx, model.int8.onnx), read defensively:
    older exports have no entry, so fall back to the file name, then fp32."""
    recorded = facts.get("precision") if isinstance(facts, dict) else None
    if isinstance(recorded, str) and recorded in PRECISIONS:
        return recorded
    named = model.name.lower().removesuffix(".onnx").rsplit(".", 1)
    return named[1] if len(named) == 2 and named[1] in PRECISIONS else "fp32"


class OnnxBackend:
    def __init__(
        self,
        model: Path,
        device: torch.device,
        providers: Sequence[str] | None,
        allow_cpu: bool,
        threads: int | None = None,
    ):
        record, facts = read_onnx_record(model)  # refuses a file without imgclf metadata before the session
        self.record = record  # check_model's record: no second parse of the whole .onnx protobuf
        wanted = choose_providers(providers, device, allow_cpu, available_providers())
        gpu = gpu_index(device) if device.type == "cuda" else None
        self.session = open_session(
            model, provider_options(wanted, gpu), threads, must_start=() if allow_cpu else wanted
        )
        used = self.session.get_providers()
        self._check_io(model)
        on_gpu = device.type == "cuda" and used[0] in GPU_PROVIDERS
        self.device = device if on_gpu else torch.device("cpu")  # where batches are decoded for it
        self.classes = self._width(len(record.classes))
        self.precision = onnx_precision(model, facts)
        note = ""
        if device.type == "cuda" and not on_gpu:
            note = (
                " - onnxruntime runs on the CPU here (no CUDA provider: the CPU-only wheel? "
                "pip install '.[gpu]'), so images are decoded on the CPU too"
            )
        self.description = (
            f"onnxruntime providers: {', '.join(used)} ({self.precision} {model.name}, "
            f"intra-op threads: {threads or 'default'}){note}"
        )

    def _check_io(self, model: Path) -> None:
        inputs, outputs = self.session.get_inputs(), [o.name for o in self.session.get_outputs()]
        if inputs[0].name != ONNX_INPUT or inputs[0].type != "tensor(uint8)" or ONNX_OUTPUT not in outputs:
            raise UserError(
                f"{model} does not take uint8 '{ONNX_INPUT}' → '{ONNX_OUTPUT}'; "
                "re-export it with `python export/main.py <bundle>`"
            )

    def _width(self, classes: int) -> int:
        shape = next(o.shape for o in self.session.get_outputs() if o.name == ONNX_OUTPUT)
        return shape[1] if len(shape) == 2 and isinstance(shape[1], int) else classes

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images).cpu()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return self._forward_bound(images)
        x = np.ascontiguousarray(images.cpu().numpy())
        (logits,) = self.session.run([ONNX_OUTPUT], {ONNX_INPUT: x})
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))

    def _forward_bound(self, images: torch.Tensor) -> torch.Tensor:
        """Input and logits bound in GPU memory (no device→host→device round trip). onnxruntime runs on its
        own stream: the host waits for torch's stream first (the input is written, and no queued kernel
        still reads the memory the logits take), and run_with_iobinding syncs its stream before returning."""
        x = images.to(self.device).contiguous()
        torch.cuda.current_stream(self.device).synchronize()
        logits = torch.empty((len(x), self.classes), dtype=torch.float32, device=self.device)
        index, binding = gpu_index(self.device), self.session.io_binding()
        binding.bind_input(ONNX_INPUT, "cuda", index, np.uint8, tuple(x.shape), x.data_ptr())
        binding.bind_output(ONNX_OUTPUT, "cuda", index, np.float32, tuple(logits.shape), logits.data_ptr())
        self.session.run_with_iobinding(binding)
        return logits


def _open_onnx(model: Path, device: torch.device, providers, allow_cpu, threads) -> Backend:
    return OnnxBackend(model, device, providers, allow_cpu, threads)


def _open_tensorrt(model: Path, device: torch.device, providers, allow_cpu, threads) -> Backend:
    from serve.trt import TensorRTBackend  # tensorrt is imported only when an engine is served

    return TensorRTBackend(model, device)


OPENERS: dict[str, Callable[..., Backend]] = {
    "torch": _open_torch,
    "onnx": _open_onnx,
    "tensorrt": _open_tensorrt,
}
