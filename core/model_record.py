"""Read the bundle record embedded in exported models: model.onnx metadata_props and model.engine.json.

Export writes; serve and export's verifier read. Reading needs only onnxruntime or onnx, whichever
is installed, so a serving machine with onnxruntime-gpu alone can still read labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.bundle import BundleRecord
from core.errors import UserError

ONNX_RECORD_KEY = "imgclf.bundle"  # metadata_props: the whole BundleRecord.to_dict() as JSON
ONNX_EXPORT_KEY = "imgclf.export"  # metadata_props: export facts (opset, versions, exporter, weights sha256)
ONNX_INPUT = "images"  # uint8 [N, 3, crop, crop] RGB
ONNX_OUTPUT = "logits"  # float32 [N, num_classes]
ONNX_PROBS = "probs"  # optional float32 [N, num_classes]
ENGINE_SIDECAR_SUFFIX = ".json"  # model.engine → model.engine.json: {"record": {...}, "engine": {...}}


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of an ONNX file as a dict, without loading its weights into a session."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model file not found: {p}")
    try:
        import onnx

        model = onnx.load(str(p), load_external_data=False)
        return {prop.key: prop.value for prop in model.metadata_props}
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors have no common base
        raise UserError(f"{p} is not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        return dict(sess.get_modelmeta().custom_metadata_map)
    except ImportError:
        raise UserError("reading model.onnx needs onnx or onnxruntime: pip install '.[cpu]'") from None
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{p} is not a readable ONNX file ({exc})") from None


def read_onnx_record(path: str | Path) -> tuple[BundleRecord, dict[str, Any]]:
    """(bundle record, export facts) from a model.onnx written by `export`."""
    meta = onnx_metadata(path)
    if ONNX_RECORD_KEY not in meta:
        raise UserError(
            f"{path} has no imgclf metadata ({ONNX_RECORD_KEY}); export it with "
            "`python export/main.py <bundle>` so labels and preprocessing travel with it"
        )
    try:
        record = json.loads(meta[ONNX_RECORD_KEY])
        facts = json.loads(meta.get(ONNX_EXPORT_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: imgclf metadata is not valid JSON ({exc})") from None
    return BundleRecord.from_dict(record, str(path)), facts


def engine_sidecar_path(engine: str | Path) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ENGINE_SIDECAR_SUFFIX)


def read_engine_sidecar(engine: str | Path) -> tuple[BundleRecord, dict[str, Any]]:
    """(bundle record, engine facts: trt version, gpu, compute capability, precision, profile, onnx sha256)."""
    side = engine_sidecar_path(engine)
    if not side.is_file():
        raise UserError(
            f"{engine} has no sidecar {side.name}; a TensorRT engine needs the JSON written beside "
            "it by `python export/main.py <bundle> --tensorrt`"
        )
    try:
        d = json.loads(side.read_text())
        return BundleRecord.from_dict(d["record"], str(side)), dict(d["engine"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{side} is damaged ({type(exc).__name__}: {exc}); rebuild the engine") from None


def bundle_ref(bundle_dir: Path) -> dict[str, str]:
    """Where a shipped file came from, without a path of the machine that built it: the run folder's name
    and the bundle's folder inside it (the export beside it finds it at ../<bundle>)."""
    real = Path(bundle_dir).resolve()
    return {"run": real.parent.name, "bundle": real.name}


def bundle_near(model_file: str | Path, facts: dict[str, Any]) -> Path | None:
    """The bundle a model file was exported from, found from the facts alone: `<run>/<bundle>` beside the
    export folder holding the file (the default layout), or the absolute path older files recorded."""
    candidates = []
    if facts.get("bundle"):
        candidates.append(Path(model_file).resolve().parent.parent / str(facts["bundle"]))
    if facts.get("bundle_path"):  # written before shipped files stopped recording machine paths
        candidates.append(Path(str(facts["bundle_path"])))
    return next((c for c in candidates if c.is_dir()), None)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks: ties model.onnx to its weights and an engine to its ONNX."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_engine_host(
    engine: str | Path,
    facts: dict[str, Any],
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int] | list[int],
) -> None:
    """Refuse an engine built for another GPU or TensorRT version (TensorRT engines are not portable).

    `facts` is the "engine" part of model.engine.json; the other arguments describe this machine.
    """
    here = {
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu_name,
        "compute_capability": list(compute_capability),
    }
    built = {k: facts.get(k) for k in here}
    built["compute_capability"] = list(built["compute_capability"] or [])
    diffs = [f"{k} {built[k]} (this machine: {here[k]})" for k in here if built[k] != here[k]]
    if not diffs:
        return
    near = bundle_near(engine, facts)
    bundle = str(near) if near else f"runs/{facts.get('run', '<run>')}/{facts.get('bundle', 'best')}"
    profile = facts.get("profile") or {}
    rebuild = (
        f"python export/main.py {bundle} --tensorrt --engine-from {facts.get('precision', 'fp16')}"
        f" --max-batch {profile.get('max', 64)}"
    )
    raise UserError(
        f"{engine} was built for another machine: {'; '.join(diffs)}. TensorRT engines only run "
        f"where they were built; rebuild it here with `{rebuild}`, or serve model.onnx instead"
    )
