"""`python export/main.py BUNDLE`: bundle → model.onnx (+ fp16/int8 variants, TensorRT engine), each kept only
if it gives PyTorch's answers on real images."""

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
import os
import shutil
import tempfile
from typing import Any

from core.errors import UserError, cli_entry
from core.lock import OutputLock
from export import variants as var  # light: no torch, so --help stays fast

EXPORT_REPORT = "export_report.json"
VERIFY_REPORT = "verify_report.json"
TRT_ONLY = ("engine_from", "opt_batch", "workspace_gb", "timing_cache")
INT8_ONLY = ("calib_images", "calib_max", "max_int8_drop", "int8_activations")
CALIB_MAX = 512
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
# The heavy modules' option names, here so --help needs no torch (a test keeps them equal)
EXPORTERS, DEFAULT_EXPORTER, OPSET = ("dynamo", "torchscript"), "dynamo", 18  # export.onnx_export
PROVIDERS, PRECISIONS = (
    ("cpu", "cuda", "tensorrt"),
    ("fp32", "fp16", "int8"),
)  # export.verify PROVIDERS, GATES
_heavy_loaded = False


def import_heavy() -> None:
    """torch, onnx and the bundle loader take seconds to import: only once the arguments are checked."""
    global _heavy_loaded, torch, WEIGHTS_FILE, load_bundle, resolve_bundle_dir, read_onnx_record, sha256_file
    global onnx_export, verify, rep, smp, stg, GateFailed
    if _heavy_loaded:  # a second call must not undo what a test patched
        return
    _heavy_loaded = True
    import torch

    from core.bundle import WEIGHTS_FILE, load_bundle, resolve_bundle_dir
    from core.model_record import read_onnx_record, sha256_file
    from export import onnx_export, verify
    from export import report as rep
    from export import samples as smp
    from export import stages as stg
    from export.stages import GateFailed


def log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


# ── arguments ────────────────────────────────────────────────────────────────────────────────────────


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python export/main.py", description=__doc__)
    p.add_argument("source", help="bundle folder (runs/<name>/best), or model.onnx with --verify-only")
    p.add_argument("--out", help="output folder (default <bundle>/../export; --verify-only: beside the ONNX)")
    p.add_argument(
        "--precision",
        default="fp32",
        help="comma list of fp32, fp16, int8: model.onnx, "
        "model.fp16.onnx, model.int8.onnx, each gated on real images (default %(default)s)",
    )
    p.add_argument("--images", help="real images for the gate (default: the bundle's valid_dir)")
    p.add_argument("--max-images", type=int, default=256, help="cap on gate images (evenly spaced sample)")
    p.add_argument(
        "--exporter",
        choices=sorted(EXPORTERS),
        default=DEFAULT_EXPORTER,
        help="torch.onnx path (default dynamo); on failure the other is suggested, not used",
    )
    p.add_argument("--opset", type=int, default=OPSET, help="ONNX opset (default %(default)s)")
    p.add_argument("--probs", action="store_true", help="add a softmax output 'probs' beside 'logits'")
    p.add_argument(
        "--provider",
        choices=sorted(PROVIDERS),
        default="cpu",
        help="onnxruntime execution provider for the gate and speed check",
    )
    p.add_argument(
        "--allow-cpu",
        action="store_true",
        help="accept onnxruntime running on CPU when the "
        "asked provider is unavailable (recorded in the report)",
    )
    p.add_argument("--max-batch", type=int, default=64, help="largest batch checked; TensorRT profile max")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch and onnxruntime in the gate and speed "
        "check (default: torch's; pass serve's --threads to predict serve)",
    )
    p.add_argument("--no-bench", action="store_true", help="skip the speed check")
    p.add_argument("--verify-only", action="store_true", help="re-run the gate on an existing ONNX file")
    p.add_argument(
        "--bundle",
        help="with --verify-only: the bundle to compare against (default: the one "
        "recorded in the ONNX export facts)",
    )
    q = p.add_argument_group("int8 (--precision ...,int8)")
    q.add_argument("--calib-images", help="calibration images (default: the bundle's train_dir)")
    q.add_argument("--calib-max", type=int, help=f"cap on calibration images (default {CALIB_MAX})")
    q.add_argument(
        "--max-int8-drop",
        type=float,
        help="accuracy points int8 may lose on the labelled gate images (default 1)",
    )
    q.add_argument(
        "--int8-activations",
        choices=var.ACTIVATIONS,
        help="uint8: fastest on onnxruntime's x86 "
        "CPU (default); int8 (symmetric): what TensorRT needs (default with --engine-from int8)",
    )
    trt = p.add_argument_group("TensorRT")
    trt.add_argument("--tensorrt", action="store_true", help="also build model.engine (pip install '.[gpu]')")
    trt.add_argument(
        "--engine-from",
        choices=list(var.FILES),
        help="the ONNX variant the engine is built "
        "from, as a strongly typed network (default fp16; added to --precision if missing)",
    )
    trt.add_argument("--opt-batch", type=int, help="profile opt batch (default: --max-batch)")
    trt.add_argument("--workspace-gb", type=float, help="builder workspace limit in GiB (default 4)")
    trt.add_argument("--timing-cache", help="timing cache, reused across builds (default <out>/timing.cache)")
    return p


def _stray(args, names: tuple[str, ...]) -> list[str]:
    return [f"--{k.replace('_', '-')}" for k in names if getattr(args, k) is not None]


def _check_variants(args) -> None:
    """--precision as a list (+ the engine's source), and flags that only make sense with what was asked."""
    args.precision = var.parse_precisions(args.precision)
    if args.tensorrt:
        args.engine_from = args.engine_from or "fp16"
        if args.engine_from not in args.precision:
            args.precision = var.parse_precisions(",".join([*args.precision, args.engine_from]))
    if "int8" not in args.precision and not args.verify_only and _stray(args, INT8_ONLY):
        raise UserError(f"{', '.join(_stray(args, INT8_ONLY))} only apply with --precision ...,int8")
    if args.tensorrt and args.engine_from == "int8" and args.int8_activations == "uint8":
        raise UserError(
            "TensorRT takes only symmetric int8 activations: drop --int8-activations uint8 "
            "or build the engine from another variant (--engine-from fp16)"
        )
    trt_int8 = args.tensorrt and args.engine_from == "int8"
    args.int8_activations = args.int8_activations or ("int8" if trt_int8 else "uint8")
    args.calib_max = CALIB_MAX if args.calib_max is None else args.calib_max
    args.max_int8_drop = 1.0 if args.max_int8_drop is None else args.max_int8_drop


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if _stray(args, TRT_ONLY) and not args.tensorrt:
        raise UserError(f"{', '.join(_stray(args, TRT_ONLY))} only apply with --tensorrt")
    if args.verify_only and (args.tensorrt or args.probs):
        raise UserError("--verify-only checks an existing ONNX file; drop --tensorrt/--probs")
    if args.bundle and not args.verify_only:
        raise UserError("--bundle only applies with --verify-only (export takes the bundle as its argument)")
    _check_variants(args)
    for flag in ("max_images", "max_batch", "calib_max", "threads"):
        if (getattr(args, flag) or 1) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_int8_drop < 0:
        raise UserError("--max-int8-drop is in accuracy points and cannot be negative (e.g. 1 for one point)")
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
        raise UserError(
            f"cannot write to output folder {out} ({reason}); choose another with --out"
        ) from None
    return out


def check_preprocess(record, bundle: Path) -> None:
    """A bundle with impossible preprocessing is named as the culprit, not the exporter that chokes on it."""
    pp = record.preprocess
    problems = [
        f"{k} {v} (must be at least 1)" for k, v in (("crop", pp.crop), ("resize", pp.resize)) if v < 1
    ]
    problems += ["std has a zero" for _ in [0] if any(s == 0 for s in pp.std)]
    problems += [
        f"mean/std need 3 values (got {len(pp.mean)}/{len(pp.std)})"
        for _ in [0]
        if (len(pp.mean), len(pp.std)) != (3, 3)
    ]
    if problems:
        raise UserError(
            f"{bundle / 'bundle.json'} has invalid preprocessing: {'; '.join(problems)}; "
            'fix its "preprocess" section (or retrain) before exporting'
        )


def fail(report: dict[str, Any], path: Path, exc) -> int:
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

    te.require_tensorrt()  # fail in a second, before the export, when it is missing or unsupported
    cache = Path(args.timing_cache) if args.timing_cache else out / "timing.cache"
    return te.EngineOptions(
        source=args.engine_from,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        workspace_gb=args.workspace_gb or 4.0,
        timing_cache=cache,
    )


def calibration_samples(args, record):
    root = Path(args.calib_images) if args.calib_images else smp.lineage_dir(record, "train_dir")
    if root is None:
        raise UserError(
            "--precision int8 needs calibration images: pass --calib-images DIR (training "
            "images); this bundle records no reachable train_dir"
        )
    source = "calib_images" if args.calib_images else "train_dir"
    return smp.load_samples(root, record.preprocess, record.classes, args.calib_max, source)


def _inputs_log(samples) -> None:
    if samples.source == "random":
        log(f"WARNING: {smp.RANDOM_WARNING}")
    else:
        log(
            f"gate images: {len(samples.paths)} from {samples.root} ({samples.source}), "
            f"{len(samples.skipped)} undecodable skipped"
        )


def _bundle_dir(source: str) -> Path:
    if Path(source).suffix == ".onnx":
        raise UserError(f"{source} is an ONNX file; to re-check it against its bundle use --verify-only")
    bundle = resolve_bundle_dir(source)  # a path to best/model.safetensors or bundle.json means best/
    if bundle != Path(source):
        log(f"bundle: {bundle} (the folder of {Path(source).name})")
    return bundle


def make_job(args, bundle: Path, out: Path):
    """Everything that can fail on the user's input fails here, before any export work."""
    verify.provider_chain(args.provider, args.allow_cpu)  # a missing provider fails now, not after the export
    onnx_export.check_exporter(args.exporter, args.opset)
    trt_opts = engine_options(args, out) if args.tensorrt else None
    model, record = load_bundle(bundle)
    check_preprocess(record, bundle)
    samples = smp.gate_samples(args.images, record, args.max_images)
    calib = calibration_samples(args, record) if "int8" in args.precision else None
    return stg.Job(
        args=args,
        bundle=bundle,
        out=out,
        work=out,
        model=model,
        record=record,
        samples=samples,
        precisions=args.precision,
        calib=calib,
        trt=trt_opts,
    )


def finish(job, report: dict[str, Any]) -> int:
    """Publish what passed, write the report with its per-variant table; exit 1 names what failed."""
    made = stg.publish(job)
    report["variants"] = rep.variant_table(report, job.precisions, job.failed)
    report["failed_variants"] = sorted(job.failed)
    report["status"] = "failed" if job.failed else "passed"
    report["files"] = {p.name: rep.file_info(p) for p in made}
    rep.write_report(job.out / EXPORT_REPORT, report)
    for line in rep.table_lines(report["variants"]):
        log(line)
    log(f"wrote {', '.join(str(p) for p in made) or 'no model file'} and {job.out / EXPORT_REPORT}")
    if job.failed:
        reasons = [f"{name} ({'; '.join(why)})" for name, why in job.failed.items()]
        log(f"FAILED: {', '.join(reasons)}")
        return 1
    return 0


def run_export(args, bundle: Path, out: Path) -> int:
    job = make_job(args, bundle, out)
    report = rep.new_report(
        "export",
        bundle=str(bundle.resolve()),
        out=str(out.resolve()),
        precisions=job.precisions,
        inputs=job.samples.describe(),
    )
    if job.calib is not None:
        report["calibration"] = job.calib.describe()
    _inputs_log(job.samples)
    job.work = Path(tempfile.mkdtemp(prefix=stg.WORK_PREFIX, dir=out))
    try:
        stg.run(job, report)
        return finish(job, report)
    except GateFailed as exc:
        return fail(report, out / EXPORT_REPORT, exc)
    finally:
        shutil.rmtree(job.work, ignore_errors=True)


def export(args) -> int:
    bundle = _bundle_dir(args.source)
    # resolve(): the parent of a bundle given as "." is "." itself, which would put export/ inside the bundle
    out = Path(args.out) if args.out else bundle.resolve().parent / "export"
    created = not out.exists()
    prepare_out(out)
    try:
        with OutputLock(out, "export", "choose another --out"):  # one export per --out at a time
            for line in stg.clear_leftovers(out):
                log(line)
            return run_export(args, bundle, out)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed export leaves no empty folder behind
        raise


# ── --verify-only ────────────────────────────────────────────────────────────────────────────────────


def bundle_for(onnx_path: Path, facts: dict[str, Any], given: str | None) -> Path:
    """--bundle, else the bundle recorded at export time; its weights must be the ones that were exported."""
    if given and not Path(given).exists():
        raise UserError(
            f"--bundle {given} not found; pass the bundle folder {onnx_path.name} was exported from"
        )
    from core.model_record import bundle_near

    where = given or bundle_near(onnx_path, facts)
    if not where or not Path(where).exists():
        recorded = f"run {facts['run']}, {facts.get('bundle')}/" if facts.get("run") else "not recorded"
        raise UserError(
            f"the bundle {onnx_path.name} was exported from ({recorded}) is not beside it; "
            "pass it with --bundle DIR"
        )
    bundle = resolve_bundle_dir(where)
    want = facts.get("weights_sha256")
    if want and sha256_file(bundle / WEIGHTS_FILE) != want:
        raise UserError(
            f"{bundle / WEIGHTS_FILE} is not the weights {onnx_path.name} was exported from "
            "(sha256 differs); pass the matching bundle with --bundle DIR"
        )
    return bundle


def verify_only(args) -> int:
    onnx_path = Path(args.source)
    if onnx_path.is_dir() or onnx_path.suffix != ".onnx":
        raise UserError(
            f"--verify-only takes an ONNX file (model.onnx, model.fp16.onnx, ...), got {onnx_path}"
        )
    onnx_record, facts = read_onnx_record(onnx_path)
    bundle = bundle_for(onnx_path, facts, args.bundle)
    out = prepare_out(Path(args.out) if args.out else onnx_path.parent)
    model, record = load_bundle(bundle)
    samples = smp.gate_samples(args.images, onnx_record, args.max_images)
    precision = facts.get("precision", "fp32")  # a variant is held to its own gate
    report = rep.new_report(
        "verify",
        onnx=str(onnx_path.resolve()),
        bundle=str(bundle.resolve()),
        export=facts,
        inputs=samples.describe(),
    )
    report["files"] = {onnx_path.name: rep.file_info(onnx_path)}
    _inputs_log(samples)
    ref, ref_logits = stg.reference(model, onnx_record, samples)
    try:
        sess = stg.gate_onnx(
            onnx_path, precision, ref, ref_logits, samples, onnx_record, args, report, bundle_record=record
        )
    except GateFailed as exc:
        return fail(report, out / VERIFY_REPORT, exc)
    if not args.no_bench:
        stg.run_bench(
            {
                "torch fp32": stg.torch_bench_runner(model, record),
                f"onnx {precision}": verify.ort_runner(sess),
            },
            samples.images,
            args.max_batch,
            report,
        )
    report["status"] = "passed"
    rep.write_report(out / VERIFY_REPORT, report)
    log(f"{onnx_path} passed; wrote {out / VERIFY_REPORT}")
    return 0


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import_heavy()
    if args.threads:
        torch.set_num_threads(args.threads)  # onnxruntime sessions take torch's count
    try:
        return verify_only(args) if args.verify_only else export(args)
    except KeyboardInterrupt:  # outputs are renamed into place only at the end, so there is nothing to undo
        print(
            "interrupted: nothing was written (an existing model.onnx and report are unchanged)",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
else:  # imported (tests, tools): every name exists at once, as with plain imports
    import_heavy()
