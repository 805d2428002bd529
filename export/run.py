"""Carry out an ExportJob: the bundle → gated ONNX variants (+ engine), or --verify-only on one ONNX file."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from core.bundle import WEIGHTS_FILE, BundleRecord, load_bundle, resolve_bundle_dir
from core.errors import UserError, disk_full, disk_full_line
from core.fsio import shown_as
from core.interrupt import EXIT_INTERRUPTED
from core.lock import OutputLock
from core.model_record import bundle_near, read_onnx_record, sha256_file
from export import onnx_export, verify
from export import samples as smp
from export import stages as stg
from export.cli import ExportJob
from export.live_run import training_warning
from export.report import ExportReport, divergence_lines, file_info, table_lines, variant_table
from export.stages import GateFailed

EXPORT_REPORT = "export_report.json"
VERIFY_REPORT = "verify_report.json"


def log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


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


def check_preprocess(record: BundleRecord, bundle: Path) -> None:
    """A bundle with impossible preprocessing is named as the culprit, not the exporter that chokes on it."""
    pp = record.preprocess
    problems = [
        f"{k} {v} (must be at least 1)" for k, v in (("crop", pp.crop), ("resize", pp.resize)) if v < 1
    ]
    if any(s == 0 for s in pp.std):
        problems.append("std has a zero")
    if (len(pp.mean), len(pp.std)) != (3, 3):
        problems.append(f"mean/std need 3 values (got {len(pp.mean)}/{len(pp.std)})")
    if problems:
        raise UserError(
            f"{bundle / 'bundle.json'} has invalid preprocessing: {'; '.join(problems)}; "
            'fix its "preprocess" section (or retrain) before exporting'
        )


def fail(report: ExportReport, path: Path, exc: GateFailed) -> int:
    report.status = "failed"
    report.failed_format = exc.fmt
    report.write(path)
    log(f"GATE FAILED for {exc.fmt}: " + "; ".join(exc.parity["failures"]))
    for line in divergence_lines(exc.parity):
        log(line)
    log(f"details in {path}")
    return 1


# ── export ───────────────────────────────────────────────────────────────────────────────────────────


def engine_options(job: ExportJob, out: Path):
    from export import tensorrt_engine as te

    te.require_tensorrt()  # fail in a second, before the export, when it is missing or unsupported
    return te.EngineOptions(
        source=job.engine_from,
        max_batch=job.max_batch,
        opt_batch=job.opt_batch,
        workspace_gb=job.workspace_gb,
        timing_cache=job.timing_cache or out / "timing.cache",
    )


def calibration_samples(calib_images: Path | None, record: BundleRecord, calib_max: int) -> smp.Samples:
    root = calib_images or smp.lineage_dir(record, "train_dir")
    if root is None:
        raise UserError(
            "--precision int8 needs calibration images: pass --calib-images DIR (training "
            "images); this bundle records no reachable train_dir"
        )
    source = "calib_images" if calib_images else "train_dir"
    return smp.load_samples(root, record.preprocess, record.classes, calib_max, source)


def _inputs_log(samples: smp.Samples) -> None:
    if samples.source == "random":
        log(f"WARNING: {smp.RANDOM_WARNING}")
    else:
        log(
            f"gate images: {len(samples.paths)} from {samples.root} ({samples.source}), "
            f"{len(samples.skipped)} undecodable skipped"
        )


def _bundle_dir(source: Path) -> Path:
    if source.suffix == ".onnx":
        raise UserError(f"{source} is an ONNX file; to re-check it against its bundle use --verify-only")
    bundle = resolve_bundle_dir(source)  # a path to best/model.safetensors or bundle.json means best/
    if bundle != source:
        log(f"bundle: {bundle} (the folder of {source.name})")
    return bundle


def make_pipeline(job: ExportJob, bundle: Path, out: Path) -> stg.Pipeline:
    """Everything that can fail on the user's input fails here, before any export work."""
    verify.provider_chain(job.provider, job.allow_cpu)  # a missing provider fails now, not after the export
    onnx_export.check_exporter(job.exporter, job.opset)
    trt_opts = engine_options(job, out) if job.tensorrt else None
    model, record = load_bundle(bundle)
    check_preprocess(record, bundle)
    samples = smp.gate_samples(job.images, record, job.max_images)
    calib = calibration_samples(job.calib_images, record, job.calib_max) if "int8" in job.precisions else None
    return stg.Pipeline(
        job=job,
        bundle=bundle,
        out=out,
        work=out,
        model=model,
        record=record,
        samples=samples,
        calib=calib,
        trt=trt_opts,
    )


def finish(pipe: stg.Pipeline, report: ExportReport) -> int:
    """Publish what passed, write the report with its per-variant table; exit 1 names what failed."""
    made = stg.publish(pipe)
    report.variants = variant_table(report, pipe.job.precisions, pipe.failed)
    report.failed_variants = sorted(pipe.failed)
    report.status = "failed" if pipe.failed else "passed"
    report.files = {p.name: file_info(p) for p in made}
    try:
        report.write(pipe.out / EXPORT_REPORT)
    except OSError:  # a full disk: a previous export's report would now describe files that were replaced
        (pipe.out / EXPORT_REPORT).unlink(missing_ok=True)
        raise
    for line in table_lines(report.variants):
        log(line)
    log(f"wrote {', '.join(str(p) for p in made) or 'no model file'} and {pipe.out / EXPORT_REPORT}")
    if pipe.failed:
        reasons = [f"{name} ({'; '.join(why)})" for name, why in pipe.failed.items()]
        log(f"FAILED: {', '.join(reasons)}")
        return 1
    return 0


def run_export(job: ExportJob, bundle: Path, out: Path) -> int:
    pipe = make_pipeline(job, bundle, out)
    report = ExportReport(
        kind="export",
        bundle=str(bundle.resolve()),
        out=str(out.resolve()),
        precisions=list(job.precisions),
        inputs=pipe.samples.describe(),
        int8_calibration=None if pipe.calib is None else pipe.calib.describe(),
    )
    _inputs_log(pipe.samples)
    pipe.work = Path(tempfile.mkdtemp(prefix=stg.WORK_PREFIX, dir=out))
    try:
        with disk_full_in(out, pipe.work):
            stg.run(pipe, report)
            return finish(pipe, report)
    except GateFailed as exc:
        return fail(report, out / EXPORT_REPORT, exc)
    finally:
        shutil.rmtree(pipe.work, ignore_errors=True)


@contextlib.contextmanager
def disk_full_in(out: Path, work: Path) -> Iterator[None]:
    """A full disk is one line naming the artifact as it would sit in --out (model.onnx, ...), never the
    private work folder it was being written in, and the two fixes."""
    try:
        with shown_as(work, out):
            yield
    except OSError as exc:
        if disk_full(exc) is None:
            raise
        raise UserError(disk_full_line(exc, "another --out", "export again")) from None


def export(job: ExportJob) -> int:
    bundle = _bundle_dir(job.source)
    warning = training_warning(bundle)
    if warning:
        log(f"WARNING: {warning}")
    # resolve(): the parent of a bundle given as "." is "." itself, which would put export/ inside the bundle
    out = job.out or bundle.resolve().parent / "export"
    created = not out.exists()
    prepare_out(out)
    try:
        with OutputLock(out, "export", "choose another --out"):  # one export per --out at a time
            for line in stg.clear_leftovers(out):
                log(line)
            return run_export(job, bundle, out)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed export leaves no empty folder behind
        raise


# ── --verify-only ────────────────────────────────────────────────────────────────────────────────────


def bundle_for(onnx_path: Path, facts: dict, given: Path | None) -> Path:
    """--bundle, else the bundle recorded at export time; its weights must be the ones that were exported."""
    if given and not given.exists():
        raise UserError(
            f"--bundle {given} not found; pass the bundle folder {onnx_path.name} was exported from"
        )
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


def verify_only(job: ExportJob) -> int:
    onnx_path = job.source
    if onnx_path.is_dir() or onnx_path.suffix != ".onnx":
        raise UserError(
            f"--verify-only takes an ONNX file (model.onnx, model.fp16.onnx, ...), got {onnx_path}"
        )
    onnx_record, facts = read_onnx_record(onnx_path)
    bundle = bundle_for(onnx_path, facts, job.bundle)
    out = prepare_out(job.out or onnx_path.parent)
    model, record = load_bundle(bundle)
    samples = smp.gate_samples(job.images, onnx_record, job.max_images)
    precision = facts.get("precision", "fp32")  # a variant is held to its own gate
    report = ExportReport(
        kind="verify",
        onnx=str(onnx_path.resolve()),
        bundle=str(bundle.resolve()),
        export=facts,
        inputs=samples.describe(),
        files={onnx_path.name: file_info(onnx_path)},
    )
    _inputs_log(samples)
    ref, ref_logits = stg.reference(model, onnx_record, samples)
    try:
        sess = stg.gate_onnx(
            onnx_path, precision, ref, ref_logits, samples, onnx_record, job, report, bundle_record=record
        )
    except GateFailed as exc:
        return fail(report, out / VERIFY_REPORT, exc)
    if job.bench:
        runners = {
            "torch fp32": stg.torch_bench_runner(model, record),
            f"onnx {precision}": verify.ort_runner(sess),
        }
        stg.run_bench(runners, samples.images, job.max_batch, report)
    report.status = "passed"
    report.write(out / VERIFY_REPORT)
    log(f"{onnx_path} passed; wrote {out / VERIFY_REPORT}")
    return 0


def run(job: ExportJob) -> int:
    """The whole command once the flags are checked; Ctrl-C is one line and exit 130."""
    if job.threads:
        torch.set_num_threads(job.threads)  # onnxruntime sessions take torch's count
    try:
        return verify_only(job) if job.verify_only else export(job)
    except KeyboardInterrupt:  # outputs are renamed into place only at the end, so there is nothing to undo
        print(
            "interrupted: nothing was written (an existing model.onnx and report are unchanged)",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_INTERRUPTED
