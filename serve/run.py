"""Run a checked ServeJob: open the model, stream the inputs through decode → model → rows, and keep the
output file whole (one writer, resumable, merged across processes). torch and accelerate load here."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import PartialState

from core.errors import UserError
from core.interrupt import EXIT_INTERRUPTED, interrupt_once
from core.lock import OutputLock, held_by_main
from core.progress import SERVE_LOG_SECONDS, Progress
from serve.accept import resolve_threshold
from serve.backends import (
    Backend,
    default_batch_size,
    load_record,
    open_backend,
    resolve_device,
)
from serve.cli import ServeJob
from serve.decode import DecodePipeline
from serve.discover import Item, iter_items
from serve.embeddings import EmbeddingWriter
from serve.pathnames import escape_path
from serve.predict import predictions_and_features
from serve.provenance import check_same_job, job_identity, meta_path, write_identity
from serve.row_paths import (
    BadRecord,
    DoneRows,
    choose_base,
    merged_inputs,
    read_record,
    recorded_base,
)
from serve.threads import serve_threads
from serve.writer import (
    SEQ,
    Layout,
    RowWriter,
    check_layout,
    done_paths,
    error_row,
    existing_parts,
    merge_parts,
    ok_rows,
    part_path,
    repair_tail,
)


def run_job(job: ServeJob) -> int:
    """The exit code: 0 done, 130 interrupted (rows kept), 2 a --show image that could not be read."""
    record = load_record(job.model)
    threshold, accept_note = resolve_threshold(job.accept_above, record, str(job.model))
    layout = Layout(
        tuple(record.classes), tuple(record.display_names), job.topk, job.probs, job.fmt, threshold
    )
    state = process_state(job.device)
    if job.embeddings and state.num_processes > 1:  # before the output file is touched
        raise UserError("--embeddings runs in one process; drop accelerate launch or --embeddings")
    if job.show:
        return show(job, layout, record.preprocess, state)
    if job.evaluate:
        from serve.evaluate import check_labelled_folder

        check_labelled_folder(job.inputs[0], record.classes)
    out = job.out
    # the main process locks `out` until the file is final (merged, summarised, evaluated); every process
    # refuses together when it is taken (core.lock.held_by_main)
    with held_by_main(OutputLock(out), state):
        identity = identity_of(job, layout)
        check_output(job, layout, identity, state)
        start = time.perf_counter()
        try:
            with interrupt_once():  # a second Ctrl-C during cleanup is ignored; the exit has a deadline
                counts, skipped = run(job, state, layout, record.preprocess, identity, accept_note)
        except KeyboardInterrupt:  # Ctrl-C is a normal way to stop: say how to continue, not a traceback
            print(
                f"interrupted: the rows written so far are kept in {out}; rerun with --resume to continue",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_INTERRUPTED
        finish(job, layout, state)
        if state.is_main_process:
            _summary(counts, skipped, time.perf_counter() - start, out)
            _warn_if_nothing_found(counts, skipped, job.inputs)
            if job.evaluate:
                _evaluate(job, layout, identity["base"])
    return 0


def identity_of(job: ServeJob, layout: Layout) -> dict:
    """What --resume must find unchanged, and where a reader (imgclf-sort, --evaluate) finds each row's file:
    a resumed output keeps the base its rows were written against (serve.row_paths) and adds the new inputs."""
    base, inputs = choose_base(job.inputs), list(job.inputs)
    resuming = job.resume and job.out and (job.out.exists() or existing_parts(job.out))
    recorded = read_record(meta_path(job.out)) if resuming else None
    if recorded is not None:
        earlier, base = resumed_base(job, recorded)
        inputs = merged_inputs(earlier, job.inputs)
    return job_identity(
        job.model, layout.topk, layout.probs, layout.fmt, job.absolute, inputs, layout.threshold, base
    )


def resumed_base(job: ServeJob, recorded: dict) -> tuple[list[str], str | None]:
    """The recorded inputs and base of the output --resume continues; refused when the record was edited
    or damaged (a guessed base would key every row anew: duplicates)."""
    meta = meta_path(job.out)
    try:
        base = recorded_base(recorded)[0]
    except BadRecord as exc:
        raise UserError(
            f"--resume: {meta} is damaged ({exc}), so the rows of {job.out.name} cannot be matched to "
            "their files; restore that file, or pass --overwrite to classify again"
        ) from None
    if base is None:  # every row so far is a URL: the first local input picks the base now
        base = choose_base(job.inputs)
    return recorded.get("inputs") or [], base


# ─── the output file's life: refuse, prepare (main process), merge ────────────────────────────


def check_output(job: ServeJob, layout: Layout, identity: dict, state: PartialState) -> None:
    """Read-only, on every process, so all of them refuse together (no one waits at a barrier)."""
    out = job.out
    parts = existing_parts(out)
    if (out.exists() or parts) and not (job.resume or job.overwrite):
        raise UserError(f"{out} already exists; pass --resume to continue it or --overwrite to replace it")
    if job.resume and (out.exists() or parts):
        check_same_job(out, identity)  # first: it names what differs, the columns only hint
        if out.exists():
            check_layout(out, layout)
        for p in parts:
            check_layout(p, layout, seq=True)
        base = identity["base"]
        if base and not job.absolute and not os.path.isdir(base) and state.is_main_process:
            print(
                f"warning: {escape_path(base)}, the folder the rows of {out.name} are relative to, is gone; "
                "an image written before and since moved is classified again under its new path (put the "
                "folder back to skip it)",
                file=sys.stderr,
                flush=True,
            )


def prepare_output(job: ServeJob, layout: Layout, identity: dict, state: PartialState) -> set[str]:
    """Main process: clear (--overwrite) or repair and fold leftover part files (--resume), then record
    the job beside `out` before its first row. Returns done paths."""
    out = job.out
    if state.is_main_process:
        if job.overwrite:
            for p in [out, meta_path(out), *existing_parts(out)]:  # no stale sidecar if the new one fails
                p.unlink(missing_ok=True)
        elif job.resume:
            if out.exists():
                repair_tail(out, layout.fmt)
            parts = existing_parts(out)
            if parts:  # a killed multi-process run: its part rows count as done
                merge_parts(out, layout, parts, append=True, skip=done_paths(out, layout))
        write_identity(out, identity)
    state.wait_for_everyone()
    return done_paths(out, layout) if job.resume else set()


def my_items(job: ServeJob, written: DoneRows, state: PartialState) -> Iterator[Item]:
    """This process's share: every world_size-th item of the sorted stream, after skipping the images
    already written (also under another spelling: a symlink). Every process walks the whole stream."""
    stream: Iterator[Item] = iter_items(list(job.inputs), job.absolute, job.max_bytes, written.base)
    if written:
        stream = (it for it in stream if not written.has(it.path, it.source))
    if job.limit:
        stream = itertools.islice(stream, job.limit)
    rank, world = state.process_index, state.num_processes
    return (replace(it, seq=i) for i, it in enumerate(stream) if i % world == rank)


def finish(job: ServeJob, layout: Layout, state: PartialState) -> None:
    state.wait_for_everyone()
    if state.num_processes > 1 and state.is_main_process:
        merge_parts(job.out, layout, existing_parts(job.out), append=job.resume)


# ─── the classification loop ──────────────────────────────────────────────────────────────────


@dataclass
class Counts:
    ok: int = 0
    errors: int = 0


def classify(
    pipe: DecodePipeline,
    backend: Backend,
    layout: Layout,
    items: Iterator[Item],
    writer: RowWriter,
    batch_size: int,
    bar: Progress,
    throttle: float,
    embeddings: EmbeddingWriter | None = None,
) -> Counts:
    counts = Counts()
    for batch, probs, features in predictions_and_features(pipe, backend, items, batch_size):
        decoded = [item.path for item, error in zip(batch.items, batch.errors) if not error]
        ok = iter(ok_rows(layout, decoded, probs) if decoded else [])  # probs: one row per decoded image
        rows = []
        for item, error in zip(batch.items, batch.errors):
            rows.append(error_row(layout, item.path, error) if error else next(ok))
            rows[-1][SEQ] = item.seq
        writer.write(rows)
        if embeddings is not None and features is not None:
            embeddings.add([r["path"] for r in rows if r["status"] == "ok"], features)
        n_err = sum(1 for r in rows if r["status"] == "error")  # ok_row turns NaN/Inf into errors
        counts.ok, counts.errors = counts.ok + len(rows) - n_err, counts.errors + n_err
        bar.update(len(rows))
        if throttle:
            time.sleep(throttle)
    return counts


def run(
    job: ServeJob, state: PartialState, layout: Layout, spec, identity: dict, accept_note: str = ""
) -> tuple[Counts, int]:
    device = resolve_device(job.device, state.device)
    # sized from where the model will run (kind, device, onnxruntime's providers), before the workers fork
    workers, threads = serve_threads(
        job.model, device, job.providers, state.num_processes, job.workers, job.threads
    )
    # the decode workers fork before the backend initialises CUDA; decoding then goes where the model runs
    with DecodePipeline(
        spec, device, workers, job.read_threads, job.timeout, max_inflight_bytes=job.max_inflight_bytes
    ) as pipe:
        backend = open_backend(job.model, device, job.providers, job.allow_cpu, threads)
        pipe.to(backend.device)
        batch_size = job.batch_size or default_batch_size(backend.device)
        if state.is_main_process:
            print(
                f"model: {job.model} | {backend.description} | decoding: {pipe.describe()} | "
                f"batch {batch_size} | {threads} model thread(s) | {state.num_processes} process(es)",
                flush=True,
            )
            if accept_note:  # which threshold `accepted` means, said once under the start line
                print(accept_note, flush=True)
        done = prepare_output(job, layout, identity, state)
        written = DoneRows(done, identity["base"], job.absolute)
        multi = state.num_processes > 1
        target = part_path(job.out, state.process_index) if multi else job.out
        share = -(-job.limit // state.num_processes) if job.limit else None
        # A bar on a terminal; in a batch log one line every SERVE_LOG_SECONDS instead of bar frames.
        bar = Progress(
            share,
            f"rank 0/{state.num_processes}" if multi else "classify",
            unit="img",
            enabled=job.progress and state.is_main_process,
            seconds=SERVE_LOG_SECONDS,
            leave=True,
        )
        embeddings = start_embeddings(job, backend)
        with RowWriter(target, layout, append=job.resume and not multi, seq=multi) as writer, bar:
            try:
                counts = classify(
                    pipe,
                    backend,
                    layout,
                    my_items(job, written, state),
                    writer,
                    batch_size,
                    bar,
                    job.throttle,
                    embeddings,
                )
            except BaseException:
                if embeddings is not None:
                    embeddings.abort()  # nothing half-written: no FILE.npy from an interrupted run
                raise
        if embeddings is not None:
            embeddings.finish()
        if state.is_main_process and pipe.report():
            print(pipe.report() + (" (this process)" if multi else ""), flush=True)
    return _gather(counts, state), written.found  # counted in the whole stream, the same on every process


def start_embeddings(job: ServeJob, backend: Backend) -> EmbeddingWriter | None:
    """--embeddings: the torch backend keeps its head's input; one process writes one file."""
    if job.embeddings is None:
        return None
    backend.enable_features()
    return EmbeddingWriter(job.embeddings)


def _gather(counts: Counts, state: PartialState) -> Counts:
    if state.num_processes == 1:
        return counts
    from accelerate.utils import gather_object

    every = gather_object([(counts.ok, counts.errors)])
    return Counts(sum(o for o, _ in every), sum(e for _, e in every))


def process_state(device: str) -> PartialState:
    """Rank and world size. Without CUDA the state must be told `cpu`, or under a launcher each process
    would think itself alone and all of them would write the same file."""
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:
        raise UserError(
            f"launched as {launched} processes but accelerate set up {state.num_processes}; "
            "launch with `accelerate launch --num_processes N -m serve.main ...`"
        )
    return state


# ─── --show: one image ────────────────────────────────────────────────────────────────────────


def show(job: ServeJob, layout: Layout, spec, state: PartialState) -> int:
    """0 when the image was classified; 2 (a user error, one line) when it could not be read or decoded."""
    from serve.show import show_one

    device = resolve_device(job.device, state.device)
    backend = open_backend(job.model, device, job.providers, job.allow_cpu)
    print(f"model: {job.model} | {backend.description}", flush=True)
    out = job.out
    with held_by_main(OutputLock(out), state) if out else contextlib.nullcontext():
        base = None
        if out:
            identity = identity_of(job, layout)
            check_output(job, layout, identity, state)
            base = identity["base"]
        item = next(iter_items(list(job.inputs), job.absolute, job.max_bytes, base))
        row = show_one(item, backend, spec, layout, job.figure, job.timeout)
        done = done_paths(out, layout) if out and job.resume else set()
        if out and not DoneRows(done, base, job.absolute).has(item.path, item.source):  # never twice
            write_identity(out, identity)
            with RowWriter(out, layout, append=job.resume) as writer:
                writer.write([row])
    if row["status"] == "error":
        raise UserError(f"{escape_path(item.source)}: {row['error']}")  # as the user spelled it
    return 0


# ─── the closing lines ────────────────────────────────────────────────────────────────────────


def _summary(counts: Counts, skipped: int, seconds: float, out: Path) -> None:
    n = counts.ok + counts.errors
    resumed = f", {skipped} already in {out.name} skipped" if skipped else ""
    print(
        f"done: {counts.ok} ok, {counts.errors} errors{resumed} in {seconds:.1f} s "
        f"({n / max(seconds, 1e-9):.1f} images/s) -> {out}",
        flush=True,
    )


def _warn_if_nothing_found(counts: Counts, skipped: int, inputs: tuple[str, ...]) -> None:
    """An empty input is not an error (a drop folder may be empty today) but must not pass in silence."""
    if counts.ok + counts.errors + skipped == 0:
        from core.images import IMAGE_EXTENSIONS

        print(
            f"warning: no images found in {', '.join(inputs)} (looked recursively for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}); nothing was classified",
            file=sys.stderr,
            flush=True,
        )


def _evaluate(job: ServeJob, layout: Layout, base: str | None) -> None:
    """`base`: the rows' folder, as this run recorded it beside the output (no need to read it back)."""
    from serve.evaluate import evaluate_output, summary

    m = evaluate_output(job.out, layout, job.inputs[0], base, job.eval_dir, job.model)
    print(summary(m, job.eval_dir), flush=True)
