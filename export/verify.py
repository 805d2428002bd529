"""The export gate: an exported model must give PyTorch's answers on real images, or the export fails.

Every backend is reduced to one shape, `logits = run(uint8 batch)`, so torch, onnxruntime and TensorRT
are compared (and timed) by the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core import ort_session as ort_session_lib
from core.errors import UserError
from core.model_record import ONNX_INPUT, ONNX_OUTPUT

Runner = Callable[[torch.Tensor], torch.Tensor]  # uint8 [N,3,H,W] (CPU) → float32 logits [N,C] (CPU)


@dataclass(frozen=True)
class Gate:
    """Pass criteria against PyTorch fp32. None = reported, not gated."""

    min_top1: float | None
    max_dprob: float | None
    max_acc_drop: float | None = None  # accuracy points lost on labelled images (int8)


GATES = {
    "fp32": Gate(min_top1=1.0, max_dprob=1e-4),
    "fp16": Gate(min_top1=0.995, max_dprob=None),
    # Accuracy alone misses an int8 file whose wrong answers cancel out (calibrated on grey images: 15% of
    # answers changed, accuracy unchanged), so int8 also needs 95% top-1 agreement. --max-int8-drop: points.
    "int8": Gate(min_top1=0.95, max_dprob=None, max_acc_drop=1.0),
}

# What each --provider asks onnxruntime for, in priority order (core.ort_session's short names). CUDA
# runs with TF32 off there, so it is compared in true fp32.
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["cpu"],
    "cuda": ["cuda", "cpu"],
    "tensorrt": ["tensorrt", "cuda", "cpu"],
}


# ── runners ──────────────────────────────────────────────────────────────────────────────────────────


def torch_runner(module: torch.nn.Module, device: str = "cpu") -> Runner:
    module = module.to(device).eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = module(x.to(device))
        out = out[0] if isinstance(out, tuple) else out
        return out.float().cpu()

    return run


def provider_chain(provider: str, allow_cpu: bool) -> list[tuple[str, dict[str, Any]]]:
    """The providers (with options) to ask onnxruntime for; a missing accelerator is an error unless CPU
    is allowed."""
    if provider not in PROVIDERS:
        raise UserError(f"unknown --provider {provider!r}; valid: {', '.join(PROVIDERS)}")
    available = ort_session_lib.available_providers()
    primary = ort_session_lib.PROVIDERS[PROVIDERS[provider][0]]
    if primary in available:
        names = [ort_session_lib.PROVIDERS[n] for n in PROVIDERS[provider]]
    elif allow_cpu:
        names = [ort_session_lib.PROVIDERS["cpu"]]
    else:
        raise UserError(
            f"--provider {provider} needs onnxruntime's {primary}, but this onnxruntime offers only "
            f"{', '.join(available)}; install onnxruntime-gpu (pip install '.[gpu]') or pass "
            "--allow-cpu to verify on CPU"
        )
    return ort_session_lib.provider_options(names, exact_fp32=True)


def ort_session(path: Path, provider: str, allow_cpu: bool):
    """An InferenceSession on exactly the asked provider, with torch's thread count (--threads: fair
    speeds); a CPU fallback is an error unless allowed."""
    chain = provider_chain(provider, allow_cpu)  # without --allow-cpu it starts with the asked provider
    return ort_session_lib.open_session(
        path, chain, threads=torch.get_num_threads(), must_start=() if allow_cpu else (chain[0][0],)
    )


def ort_runner(sess, output: str = ONNX_OUTPUT) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run([output], {ONNX_INPUT: x.cpu().numpy()})[0])

    return run


def run_batched(run: Runner, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    return torch.cat([run(images[i : i + batch]) for i in range(0, len(images), batch)])


# ── comparison ───────────────────────────────────────────────────────────────────────────────────────


def compare(
    ref: torch.Tensor, got: torch.Tensor, paths: list[str], labels: list[int], display_names: list[str]
) -> dict[str, Any]:
    """Parity figures of `got` against the reference logits, and where they diverge most.

    NaN compares as neither greater nor smaller, so a NaN figure would pass every threshold: rows with a
    non-finite logit are counted on each side (judge fails on any), and figures are None, never NaN."""
    ref, got = ref.double(), got.double()
    nonfinite = {
        "torch": int((~torch.isfinite(ref)).any(1).sum()),
        "exported": int((~torch.isfinite(got)).any(1).sum()),
    }
    dprob = (ref.softmax(1) - got.softmax(1)).abs().amax(1)
    dlogit = (ref - got).abs().amax(1)
    ref_top, got_top = ref.argmax(1), got.argmax(1)
    agree = ref_top == got_top
    worst = int(dprob.argmax())
    out: dict[str, Any] = {
        "n": len(paths),
        "nonfinite": nonfinite,
        "top1_agreement": float(agree.double().mean()),
        "max_abs_logit": _finite(dlogit.max()),
        "max_abs_prob": _finite(dprob.max()),
        "mean_abs_prob": _finite(dprob.mean()),
        "worst": {
            "path": paths[worst],
            "abs_prob": _finite(dprob[worst]),
            "torch_logits": [_finite(v, 6) for v in ref[worst].tolist()],
            "exported_logits": [_finite(v, 6) for v in got[worst].tolist()],
        },
        "disagreements": [
            {
                "path": paths[i],
                "torch": display_names[int(ref_top[i])],
                "exported": display_names[int(got_top[i])],
            }
            for i in (~agree).nonzero().flatten().tolist()[:10]
        ],
    }
    out["accuracy"] = _accuracy(ref_top, got_top, labels)
    return out


def _finite(value, digits: int | None = None) -> float | None:
    v = float(value)
    if not math.isfinite(v):
        return None
    return round(v, digits) if digits is not None else v


def nonfinite_reasons(parity: dict[str, Any]) -> list[str]:
    """A non-finite logit on either side fails every gate, with the side named: NaN in the reference
    means the bundle's own weights are broken, not the export."""
    bad, n = parity.get("nonfinite") or {}, parity["n"]
    reasons = []
    if bad.get("torch"):
        reasons.append(
            f"the PyTorch reference gave NaN/Inf logits on {bad['torch']} of {n} images: the bundle's "
            "weights are broken (NaN/Inf); retrain, or export another bundle"
        )
    if bad.get("exported"):
        reasons.append(f"the exported model gave NaN/Inf logits on {bad['exported']} of {n} images")
    return reasons


def _accuracy(ref_top: torch.Tensor, got_top: torch.Tensor, labels: list[int]) -> dict[str, Any] | None:
    """Accuracy of both against folder labels, when the images sit in class folders."""
    lab = torch.tensor(labels)
    known = lab >= 0
    if not bool(known.any()):
        return None
    torch_acc = float((ref_top[known] == lab[known]).double().mean())
    got_acc = float((got_top[known] == lab[known]).double().mean())
    return {"n": int(known.sum()), "torch": torch_acc, "exported": got_acc, "delta": got_acc - torch_acc}


def judge(parity: dict[str, Any], gate: Gate) -> list[str]:
    """Reasons the gate fails (empty list: passed)."""
    reasons = nonfinite_reasons(parity)
    if reasons:
        return reasons
    if gate.min_top1 is not None and parity["top1_agreement"] < gate.min_top1:
        reasons.append(f"top-1 agreement {parity['top1_agreement']:.2%} < {gate.min_top1:.1%}")
    if gate.max_dprob is not None and parity["max_abs_prob"] > gate.max_dprob:
        reasons.append(f"max |Δprob| {parity['max_abs_prob']:.3g} > {gate.max_dprob:g}")
    if gate.max_acc_drop is not None:
        reasons += _accuracy_drop(parity, gate.max_acc_drop)
    return reasons


def _accuracy_drop(parity: dict[str, Any], max_drop: float) -> list[str]:
    """Accuracy points lost against the labels; unlabelled images bound it by disagreement instead (an
    accuracy cannot drop by more than the share of answers that changed)."""
    acc = parity["accuracy"]
    if acc is not None:
        drop = (acc["torch"] - acc["exported"]) * 100
        return (
            [
                f"accuracy {acc['exported']:.2%} vs torch {acc['torch']:.2%}: drop {drop:.2f} points > "
                f"{max_drop:g}"
            ]
            if drop > max_drop + 1e-9
            else []
        )
    changed = (1 - parity["top1_agreement"]) * 100
    return (
        [f"top-1 changed on {changed:.2f}% of the (unlabelled) images > {max_drop:g} points"]
        if changed > max_drop + 1e-9
        else []
    )


def check_batches(
    ref: Runner, got: Runner, images: torch.Tensor, sizes: list[int], num_classes: int, gate: Gate
) -> tuple[dict[str, Any], list[str]]:
    """Run the dynamic batch axis at each size (real images tiled to fill) against the reference."""
    figures, reasons = {}, []
    for b in sizes:
        x = images[torch.arange(b) % len(images)]
        r, g = ref(x), got(x)
        if tuple(g.shape) != (b, num_classes):
            reasons.append(f"batch {b}: output shape {tuple(g.shape)} != {(b, num_classes)}")
            continue
        if not (bool(torch.isfinite(r).all()) and bool(torch.isfinite(g).all())):
            reasons.append(f"batch {b}: NaN/Inf logits")
            continue
        dprob = float((r.double().softmax(1) - g.double().softmax(1)).abs().max())
        figures[str(b)] = {"max_abs_prob": dprob}
        if gate.max_dprob is not None and dprob > gate.max_dprob:
            reasons.append(f"batch {b}: max |Δprob| {dprob:.3g} > {gate.max_dprob:g}")
    return figures, reasons


def verify(
    ref: Runner,
    got: Runner,
    samples,
    display_names: list[str],
    gate: Gate,
    batch_sizes: list[int],
    ref_logits: torch.Tensor | None = None,
) -> dict[str, Any]:
    """The whole gate for one exported format: parity on the samples plus the batch-size check."""
    ref_logits = run_batched(ref, samples.images) if ref_logits is None else ref_logits
    got_logits = run_batched(got, samples.images)
    parity = compare(ref_logits, got_logits, samples.paths, samples.labels, display_names)
    parity["batches"], batch_reasons = check_batches(
        ref, got, samples.images, batch_sizes, len(display_names), gate
    )
    parity["gate"] = {
        "min_top1": gate.min_top1,
        "max_abs_prob": gate.max_dprob,
        "max_accuracy_drop_points": gate.max_acc_drop,
    }
    parity["failures"] = judge(parity, gate) + batch_reasons
    parity["passed"] = not parity["failures"]
    return parity
