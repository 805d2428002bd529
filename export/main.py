"""`python export/main.py BUNDLE`: bundle → model.onnx (+ TensorRT engine), kept only if it equals PyTorch."""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: sys.path[0] is export/, where our module names (tensorrt_engine, verify, ...) could
    # shadow installed packages. Put the repo root there instead so `core` and `export` import as packages.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import contextlib
import copy
import os
import tempfile
import time
from typing import Any

from core.errors import UserError, cli_entry
from core.fsio import atomic_path

ONNX_FILE = "model.onnx"
ENGINE_FILE = "model.engine"
EXPORT_REPORT = "export_report.json"
VERIFY_REPORT = "verify_report.json"
TRT_ONLY = ("precision", "opt_batch", "workspace_gb", "timing_cache", "calib_images")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
RECORD_FIELDS = ("arch", "classes", "display_names", "preprocess", "head", "num_classes")
# The heavy modules' option names, here so --help needs no torch (a test keeps them equal)
EXPORTERS, DEFAULT_EXPORTER, OPSET = ("dynamo", "torchscript"), "dynamo", 18  # export.onnx_export
PROVIDERS, PRECISIONS = ("cpu", "cuda", "tensorrt"), ("fp32", "fp16", "int8")  # export.verify PROVIDERS, GATES
_heavy_loaded = False


def import_heavy() -> None:
    """torch, onnx and the bundle loader take seconds to import: only once the arguments are checked."""
    global _heavy_loaded, torch, WEIGHTS_FILE, load_bundle, resolve_bundle_dir, engine_sidecar_path
    global read_onnx_record, sha256_file, onnx_export, verify, rep, smp, bench
    if _heavy_loaded:  # a second call must not undo what a test patched
        return
    _heavy_loaded = True
    import torch

    from core.bundle import WEIGHTS_FILE, load_bundle, resolve_bundle_dir
    from core.model_record import engine_sidecar_path, read_onnx_record, sha256_file
    from export import onnx_export, verify
    from export import report as rep
    from export import samples as smp
    from export.bench import bench


class GateFailed(Exception):
    """An exported format did not reproduce PyTorch; carries the parity figures for the report."""

    def __init__(self, fmt: str, parity: dict[str, Any]):
        super().__init__(fmt)
        self.fmt, self.parity = fmt, parity


def log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


# ── arguments ────────────────────────────────────────────────────────────────────────────────────────

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python export/main.py", description=__doc__)
    p.add_argument("source", help="bundle folder (runs/<name>/best), or model.onnx with --verify-only")
    p.add_argument("--out", help="output folder (default <bundle>/../export; --verify-only: beside the ONNX)")
    p.add_argument("--images", help="real images for the parity gate (default: the bundle's valid_dir)")
    p.add_argument("--max-images", type=int, default=256, help="cap on parity images (evenly spaced sample)")
    p.add_argument("--exporter", choices=sorted(EXPORTERS), default=DEFAULT_EXPORTER,
                   help="torch.onnx path (default dynamo); on failure the other is suggested, not used")
    p.add_argument("--opset", type=int, default=OPSET, help="ONNX opset (default %(default)s)")
    p.add_argument("--probs", action="store_true", help="add a softmax output 'probs' beside 'logits'")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu",
                   help="onnxruntime execution provider for the gate and speed check")
    p.add_argument("--allow-cpu", action="store_true", help="accept onnxruntime running on CPU when the "
                   "asked provider is unavailable (recorded in the report)")
    p.add_argument("--max-batch", type=int, default=64, help="largest batch checked; TensorRT profile max")
    p.add_argument("--no-bench", action="store_true", help="skip the speed check")
    p.add_argument("--verify-only", action="store_true", help="re-run the gate on an existing model.onnx")
    p.add_argument("--bundle", help="with --verify-only: the bundle to compare against (default: the one "
                   "recorded in the ONNX export facts)")
    trt = p.add_argument_group("TensorRT")
    trt.add_argument("--tensorrt", action="store_true", help="also build model.engine (pip install '.[gpu]')")
    trt.add_argument("--precision", choices=list(PRECISIONS), help="engine precision (default fp16)")
    trt.add_argument("--opt-batch", type=int, help="profile opt batch (default: --max-batch)")
    trt.add_argument("--workspace-gb", type=float, help="builder workspace limit in GiB (default 4)")
    trt.add_argument("--timing-cache", help="timing cache, reused across builds (default <out>/timing.cache)")
    trt.add_argument("--calib-images", help="int8 calibration images (default: the bundle's train_dir)")
    trt.add_argument("--calib-max", type=int, default=512, help="cap on int8 calibration images")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    stray = [f"--{k.replace('_', '-')}" for k in TRT_ONLY if getattr(args, k) is not None]
    if stray and not args.tensorrt:
        raise UserError(f"{', '.join(stray)} only apply with --tensorrt")
    if args.precision != "int8" and args.calib_images is not None:
        raise UserError("--calib-images only applies with --tensorrt --precision int8")
    if args.verify_only and (args.tensorrt or args.probs):
        raise UserError("--verify-only checks an existing model.onnx; drop --tensorrt/--probs")
    if args.bundle and not args.verify_only:
        raise UserError("--bundle only applies with --verify-only (export takes the bundle as its argument)")
    for flag in ("max_images", "max_batch", "calib_max"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.opt_batch is not None and not 1 <= args.opt_batch <= args.max_batch:
        raise UserError(f"--opt-batch must be between 1 and --max-batch ({args.max_batch})")
    return args


def prepare_out(out: Path) -> Path:
    """Create --out and prove it writable before any work: a bad folder fails at once, not after export."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose a folder with --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or exc
        raise UserError(f"cannot write to output folder {out} ({reason}); choose another with --out") \
            from None
    return out


def gate_sizes(max_batch: int) -> list[int]:
    return sorted({b for b in (1, 7) if b <= max_batch} | {max_batch})


# ── the ONNX gate (shared by export and --verify-only) ───────────────────────────────────────────────

def record_mismatch(onnx_record: dict[str, Any], bundle_record: dict[str, Any]) -> list[str]:
    return [f"metadata {k} differs from the bundle's" for k in RECORD_FIELDS
            if onnx_record.get(k) != bundle_record.get(k)]


def gate_onnx(onnx_path: Path, model, record, samples: smp.Samples, args, report: dict[str, Any],
              bundle_record=None):
    """Parity of onnxruntime with PyTorch fp32 on the samples, and of the embedded record with the bundle's.

    `record` supplies the preprocessing (with --verify-only: the ONNX's own, as serve will use it).
    Raises GateFailed; returns (session, torch reference runner, reference logits).
    """
    ref = verify.torch_runner(onnx_export.ExportGraph(model, record))
    t = time.perf_counter()
    ref_logits = verify.run_batched(ref, samples.images)
    sess = verify.ort_session(onnx_path, args.provider, args.allow_cpu)
    parity = verify.verify(ref, verify.ort_runner(sess), samples, record.display_names, verify.GATES["fp32"],
                           gate_sizes(args.max_batch), ref_logits)
    onnx_record, _ = read_onnx_record(onnx_path)
    parity["failures"] += record_mismatch(onnx_record.to_dict(), (bundle_record or record).to_dict())
    parity["passed"] = not parity["failures"]
    parity.update(provider_requested=args.provider, providers=sess.get_providers())
    report["times_s"]["verify_onnx"] = round(time.perf_counter() - t, 3)
    report["parity"]["onnx"] = parity
    log(rep.parity_line(f"onnx [{', '.join(sess.get_providers())}]", parity))
    if not parity["passed"]:
        raise GateFailed("onnx", parity)
    return sess, ref, ref_logits


def run_bench(runners: dict[str, Any], crop: int, max_batch: int, report: dict[str, Any]) -> None:
    for name, run in runners.items():
        report["bench"][name] = b = bench(run, crop, max_batch)
        log(f"speed {name}: batch 1 {b['batch1_latency_ms']:.2f} ms, best {b['best_images_per_s']:.0f} img/s "
            f"at batch {b['best_batch']}")


def torch_bench_runner(model, record):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return verify.torch_runner(copy.deepcopy(onnx_export.ExportGraph(model, record)), device)


def _inputs_log(samples: smp.Samples) -> None:
    if samples.source == "random":
        log(f"WARNING: {smp.RANDOM_WARNING}")
    else:
        log(f"parity images: {len(samples.paths)} from {samples.root} ({samples.source}), "
            f"{len(samples.skipped)} undecodable skipped")


def fail(report: dict[str, Any], path: Path, exc: GateFailed) -> int:
    report["status"] = "failed"
    report["failed_format"] = exc.fmt
    rep.write_report(path, report)
    log(f"GATE FAILED for {exc.fmt}: " + "; ".join(exc.parity["failures"]))
    for line in rep.divergence_lines(exc.parity):
        log(line)
    log(f"details in {path}")
    return 1


# ── export ───────────────────────────────────────────────────────────────────────────────────────────

def engine_options(args, out: Path):
    from export import tensorrt_engine as te

    te.require_tensorrt()  # fail in a second, before the export, when it is missing
    cache = Path(args.timing_cache) if args.timing_cache else out / "timing.cache"
    return te.EngineOptions(precision=args.precision or "fp16", max_batch=args.max_batch,
                            opt_batch=args.opt_batch, workspace_gb=args.workspace_gb or 4.0,
                            timing_cache=cache)


def calibration_images(args, record) -> torch.Tensor:
    root = Path(args.calib_images) if args.calib_images else smp.lineage_dir(record, "train_dir")
    if root is None:
        raise UserError("--precision int8 needs calibration images: pass --calib-images DIR (training "
                        "images); this bundle records no reachable train_dir")
    return smp.load_samples(root, record.preprocess, record.classes, args.calib_max, "train_dir").images


def tensorrt_stage(stack, onnx_tmp: Path, ctx: dict[str, Any], report: dict[str, Any]):
    from export import tensorrt_engine as te

    args, opts, out, record = ctx["args"], ctx["trt"], ctx["out"], ctx["record"]
    engine_path = out / ENGINE_FILE
    eng_tmp = stack.enter_context(atomic_path(engine_path))
    side_tmp = stack.enter_context(atomic_path(engine_sidecar_path(engine_path)))
    if opts.precision == "int8":
        opts.calib_cache = out / f"calib-{sha256_file(onnx_tmp)[:12]}.cache"
    log(f"building TensorRT {opts.precision} engine, profile {opts.profile()} ...")
    info = te.build_engine(onnx_tmp, eng_tmp, record.preprocess.crop, opts, ctx.get("calib"))
    report["times_s"]["tensorrt_build"] = info["build_s"]
    report["tensorrt"] = info
    side = te.sidecar(record.to_dict(), opts, sha256_file(onnx_tmp), ctx["bundle"])
    side_tmp.write_text(te.sidecar_json(side))
    runner = te.EngineRunner(eng_tmp.read_bytes())
    t = time.perf_counter()
    parity = verify.verify(ctx["ref"], runner, ctx["samples"], record.display_names,
                           verify.GATES[opts.precision], gate_sizes(args.max_batch), ctx["ref_logits"])
    report["times_s"]["verify_tensorrt"] = round(time.perf_counter() - t, 3)
    report["parity"]["tensorrt"] = parity
    log(rep.parity_line(f"tensorrt {opts.precision}", parity))
    if not parity["passed"]:
        raise GateFailed("tensorrt", parity)
    return runner


def export_stages(stack, ctx: dict[str, Any], report: dict[str, Any]) -> None:
    """Export → gate → (engine → gate) → bench, on temp files renamed only when every gate has passed."""
    args, out, model, record = ctx["args"], ctx["out"], ctx["model"], ctx["record"]
    onnx_tmp = stack.enter_context(atomic_path(out / ONNX_FILE))
    log(f"exporting {record.arch} with the {args.exporter} exporter, opset {args.opset} ...")
    t = time.perf_counter()
    report["export"] = onnx_export.export_onnx(model, record, ctx["bundle"], onnx_tmp, args.exporter,
                                               args.opset, args.probs)
    report["times_s"]["export_onnx"] = round(time.perf_counter() - t, 3)
    log(f"exported in {report['times_s']['export_onnx']:.1f} s ({onnx_tmp.stat().st_size / 2**20:.2f} MB); "
        "onnx.checker passed")
    sess, ctx["ref"], ctx["ref_logits"] = gate_onnx(onnx_tmp, model, record, ctx["samples"], args, report)
    runners = {"torch": torch_bench_runner(model, record), "onnx": verify.ort_runner(sess)}
    if ctx["trt"] is not None:
        runners["tensorrt"] = tensorrt_stage(stack, onnx_tmp, ctx, report)
    if not args.no_bench:
        run_bench(runners, record.preprocess.crop, args.max_batch, report)


def export(args) -> int:
    if Path(args.source).suffix == ".onnx":
        raise UserError(f"{args.source} is an ONNX file; to re-check it against its bundle use --verify-only")
    bundle = resolve_bundle_dir(args.source)
    # resolve(): the parent of a bundle given as "." is "." itself, which would put export/ inside the bundle
    out = prepare_out(Path(args.out) if args.out else bundle.resolve().parent / "export")
    verify.provider_chain(args.provider, args.allow_cpu)  # a missing provider fails now, not after the export
    trt_opts = engine_options(args, out) if args.tensorrt else None
    model, record = load_bundle(bundle)
    samples = smp.gate_samples(args.images, record, args.max_images)
    ctx = {"args": args, "out": out, "bundle": bundle, "model": model, "record": record, "samples": samples,
           "trt": trt_opts}
    if trt_opts is not None and trt_opts.precision == "int8":
        ctx["calib"] = calibration_images(args, record)  # before the export: a missing folder fails now
    report = rep.new_report("export", bundle=str(bundle.resolve()), out=str(out.resolve()),
                            inputs=samples.describe())
    _inputs_log(samples)
    try:
        with contextlib.ExitStack() as stack:
            export_stages(stack, ctx, report)
    except GateFailed as exc:
        return fail(report, out / EXPORT_REPORT, exc)
    report["status"] = "passed"
    made = [out / ONNX_FILE]
    if trt_opts is not None:
        made += [out / ENGINE_FILE, engine_sidecar_path(out / ENGINE_FILE)]
    report["files"] = {p.name: rep.file_info(p) for p in made}
    rep.write_report(out / EXPORT_REPORT, report)
    log(f"wrote {', '.join(str(p) for p in made)} and {out / EXPORT_REPORT}")
    return 0


# ── --verify-only ────────────────────────────────────────────────────────────────────────────────────

def bundle_for(onnx_path: Path, facts: dict[str, Any], given: str | None) -> Path:
    """--bundle, else the bundle recorded at export time; its weights must be the ones that were exported."""
    if given and not Path(given).exists():
        raise UserError(f"--bundle {given} not found; pass the bundle folder {onnx_path.name} was exported from")
    where = given or facts.get("bundle_path")
    if not where or not Path(where).exists():
        raise UserError(f"the bundle {onnx_path.name} was exported from ({where or 'not recorded'}) is not "
                        "on this machine; pass it with --bundle DIR")
    bundle = resolve_bundle_dir(where)
    want = facts.get("weights_sha256")
    if want and sha256_file(bundle / WEIGHTS_FILE) != want:
        raise UserError(f"{bundle / WEIGHTS_FILE} is not the weights {onnx_path.name} was exported from "
                        "(sha256 differs); pass the matching bundle with --bundle DIR")
    return bundle


def verify_only(args) -> int:
    onnx_path = Path(args.source)
    if onnx_path.is_dir() or onnx_path.suffix != ".onnx":
        raise UserError(f"--verify-only takes a model.onnx file, got {onnx_path}")
    onnx_record, facts = read_onnx_record(onnx_path)
    bundle = bundle_for(onnx_path, facts, args.bundle)
    out = prepare_out(Path(args.out) if args.out else onnx_path.parent)
    model, record = load_bundle(bundle)
    samples = smp.gate_samples(args.images, onnx_record, args.max_images)
    report = rep.new_report("verify", onnx=str(onnx_path.resolve()), bundle=str(bundle.resolve()),
                            export=facts, inputs=samples.describe())
    report["files"] = {onnx_path.name: rep.file_info(onnx_path)}
    _inputs_log(samples)
    try:
        sess, _, _ = gate_onnx(onnx_path, model, onnx_record, samples, args, report, bundle_record=record)
    except GateFailed as exc:
        return fail(report, out / VERIFY_REPORT, exc)
    if not args.no_bench:
        run_bench({"torch": torch_bench_runner(model, record), "onnx": verify.ort_runner(sess)},
                  record.preprocess.crop, args.max_batch, report)
    report["status"] = "passed"
    rep.write_report(out / VERIFY_REPORT, report)
    log(f"{onnx_path} passed; wrote {out / VERIFY_REPORT}")
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import_heavy()
    try:
        return verify_only(args) if args.verify_only else export(args)
    except KeyboardInterrupt:  # outputs are renamed into place only at the end, so there is nothing to undo
        print("interrupted: nothing was written (an existing model.onnx and report are unchanged)",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
else:  # imported (tests, tools): every name exists at once, as with plain imports
    import_heavy()
