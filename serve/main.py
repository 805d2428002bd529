"""Classify folders, files and URLs with a bundle, model.onnx or model.engine into a streaming, resumable CSV.

python serve/main.py runs/flowers/best data/incoming --out predictions.csv
accelerate launch --num_processes 8 serve/main.py model.onnx /data/millions --out preds.csv
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

if __package__ in (None, ""):  # `python serve/main.py` puts serve/ on sys.path, not the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.dist import ends_process_group
from core.errors import UserError, cli_entry
from core.interrupt import interrupt_once
from core.progress import SERVE_LOG_SECONDS, Progress
from serve.budget import MAX_INFLIGHT_MB
from serve.discover import MAX_FILE_MB, Item, check_inputs, is_url, iter_items
from serve.lock import OutputLock
from serve.writer import (
    FORMATS,
    SEQ,
    Layout,
    RowWriter,
    check_layout,
    done_paths,
    error_row,
    existing_parts,
    merge_parts,
    ok_row,
    part_path,
    repair_tail,
)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
BACKENDS = (
    "torch",
    "onnx",
    "tensorrt",
)  # serve.backends.OPENERS' keys, here so --help needs no torch (tested)


_heavy_loaded = False


def import_heavy() -> None:
    """torch, accelerate and the backends take seconds to import: only once the arguments are checked."""
    global \
        _heavy_loaded, \
        torch, \
        PartialState, \
        Backend, \
        default_threads, \
        load_record, \
        open_backend, \
        resolve_device
    global DecodePipeline, predictions, check_same_job, job_identity, meta_path, write_identity
    if _heavy_loaded:  # a second call must not undo what a test patched
        return
    _heavy_loaded = True
    import torch
    from accelerate import PartialState

    from serve.backends import Backend, default_threads, load_record, open_backend, resolve_device
    from serve.decode import DecodePipeline
    from serve.predict import predictions
    from serve.provenance import check_same_job, job_identity, meta_path, write_identity


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="serve/main.py", description=__doc__.splitlines()[0])
    p.add_argument("model", help="bundle folder (runs/<name>/best), model.onnx or model.engine")
    p.add_argument("inputs", nargs="+", help="folders (recursive), image files and/or http(s) URLs")
    p.add_argument("--out", help="predictions file (.csv, or .jsonl); optional with --show")
    p.add_argument("--format", choices=FORMATS, help="output format (default: from --out's suffix, else csv)")
    p.add_argument("--topk", type=int, default=5, help="how many top classes per row (columns top<K>_*)")
    p.add_argument("--probs", action="store_true", help="add one prob_<label> column per class")
    p.add_argument("--absolute", action="store_true", help="absolute paths instead of relative to each input")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip paths already in --out and append the rest")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], help="default: the file's own")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--providers", help="onnxruntime providers in priority order, e.g. tensorrt,cuda,cpu")
    p.add_argument(
        "--allow-cpu",
        action="store_true",
        help="with onnxruntime's CUDA provider: CPU kernels "
        "may take what CUDA cannot, and a CUDA provider that failed to start is accepted",
    )
    p.add_argument("--batch-size", type=int, help="images per model call (default: 256 on GPU, 32 on CPU)")
    p.add_argument("--workers", type=int, help="CPU decoding processes per GPU/process (0: decode inline)")
    p.add_argument(
        "--threads",
        type=int,
        help="model threads, torch and onnxruntime (default: the usable CPUs "
        "left after the decode workers, at least 1)",
    )
    p.add_argument("--read-threads", type=int, default=8, help="file/URL reading threads")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds a URL fetch may take in all (connect, headers, body) before its row is an error",
    )
    p.add_argument(
        "--max-file-mb",
        type=float,
        default=MAX_FILE_MB,
        help=f"larger files and downloads get an error row, unread (default {MAX_FILE_MB})",
    )
    p.add_argument(
        "--max-inflight-mb",
        type=float,
        default=MAX_INFLIGHT_MB,
        help="bytes read but not yet decoded, across all reading threads and decode workers, wait "
        f"below this (default {MAX_INFLIGHT_MB}; one larger file still goes through alone)",
    )
    p.add_argument("--limit", type=int, help="classify at most N new images")
    p.add_argument(
        "--throttle", type=float, default=0.0, help="pause N seconds after each batch (shared disks)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="input is a labelled folder: also write accuracy, per-class accuracy, confusion matrix",
    )
    p.add_argument("--eval-dir", help="where --evaluate writes (default: <out stem>_eval/ beside --out)")
    p.add_argument("--show", action="store_true", help="one image: print top-k and save the top-k figure")
    p.add_argument("--figure", help="--show figure path (default: <image name>_topk.png)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    positive = {
        "--topk": args.topk,
        "--batch-size": args.batch_size,
        "--limit": args.limit,
        "--threads": args.threads,
        "--read-threads": args.read_threads,
        "--timeout": args.timeout,
        "--max-file-mb": args.max_file_mb,
        "--max-inflight-mb": args.max_inflight_mb,
    }
    for flag, value in positive.items():
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be positive (got {value})")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers must be 0 or more (got {args.workers})")
    if args.show and (len(args.inputs) != 1 or os.path.isdir(args.inputs[0])):
        raise UserError("--show takes exactly one image file or URL; for folders use --out preds.csv")
    if args.evaluate and (len(args.inputs) != 1 or is_url(args.inputs[0])):
        raise UserError("--evaluate takes exactly one labelled folder (class subfolders) as input")
    for flag, value, mode, on in (
        ("--eval-dir", args.eval_dir, "--evaluate", args.evaluate),
        ("--figure", args.figure, "--show", args.show),
    ):
        if value and not on:
            raise UserError(f"{flag} only applies with {mode}; add {mode} or drop {flag}")
    if not args.out and not args.show:
        raise UserError("--out is required (e.g. --out predictions.csv)")
    if args.out and Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a folder; give a file name such as {args.out}/predictions.csv")
    if args.out and os.path.exists(args.out) and not os.path.isfile(args.out):  # --overwrite would unlink it
        raise UserError(
            f"--out {args.out} is not a regular file (a device, FIFO or socket); give a file name "
            "such as predictions.csv"
        )


def output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    return "jsonl" if args.out and Path(args.out).suffix.lower() in (".jsonl", ".ndjson") else "csv"


# ─── the output file's life: refuse, prepare (main process), merge ────────────────────────────


def check_output(
    out: Path, layout: Layout, args: argparse.Namespace, identity: dict, state: PartialState
) -> None:
    """Read-only, on every process, so all of them refuse together (no one waits at a barrier)."""
    parts = existing_parts(out)
    if (out.exists() or parts) and not (args.resume or args.overwrite):
        raise UserError(f"{out} already exists; pass --resume to continue it or --overwrite to replace it")
    if args.resume and (out.exists() or parts):
        recorded = check_same_job(out, identity)  # first: it names what differs, the columns only hint
        if out.exists():
            check_layout(out, layout)
        for p in parts:
            check_layout(p, layout, seq=True)
        if not recorded and state.is_main_process:
            print(
                f"warning: {out} has no {meta_path(out).name} (written by an older serve), so --resume cannot "
                "check it came from this model; its columns match, continuing",
                file=sys.stderr,
                flush=True,
            )


@contextlib.contextmanager
def output_lock(out: Path, state: PartialState) -> Iterator[None]:
    """The main process locks `out` for the whole run; every process refuses together when it is taken."""
    lock = OutputLock(out)
    refusal = None
    if state.is_main_process:
        try:
            refusal = lock.acquire()
        except UserError as exc:
            refusal = str(exc)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal:
        raise UserError(refusal)
    try:
        yield
    finally:
        lock.release()


def prepare_output(
    out: Path, layout: Layout, args: argparse.Namespace, identity: dict, state: PartialState
) -> set[str]:
    """Main process: clear (--overwrite) or repair and fold leftover part files (--resume), then record
    the job beside `out` before its first row. Returns done paths."""
    if state.is_main_process:
        if args.overwrite:
            for p in [out, *existing_parts(out)]:
                p.unlink(missing_ok=True)
        elif args.resume:
            if out.exists():
                repair_tail(out, layout.fmt)
            parts = existing_parts(out)
            if parts:  # a killed multi-process run: its part rows count as done
                merge_parts(out, layout, parts, append=True, skip=done_paths(out, layout))
        write_identity(out, identity)
    state.wait_for_everyone()
    return done_paths(out, layout) if args.resume else set()


def my_items(args: argparse.Namespace, done: set[str], state: PartialState) -> Iterator[Item]:
    """This process's share: every world_size-th item of the sorted stream, after skipping done paths."""
    stream: Iterator[Item] = iter_items(args.inputs, args.absolute, _max_bytes(args))
    if done:
        stream = (it for it in stream if it.path not in done)
    if args.limit:
        stream = itertools.islice(stream, args.limit)
    rank, world = state.process_index, state.num_processes
    return (replace(it, seq=i) for i, it in enumerate(stream) if i % world == rank)


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
) -> Counts:
    counts = Counts()
    for batch, probs in predictions(pipe, backend, items, batch_size):
        rows, j = [], 0
        for item, error in zip(batch.items, batch.errors):
            if error:
                rows.append(error_row(layout, item.path, error))
            else:
                rows.append(ok_row(layout, item.path, probs[j]))
                j += 1
            rows[-1][SEQ] = item.seq
        writer.write(rows)
        n_err = sum(1 for r in rows if r["status"] == "error")
        counts.ok, counts.errors = counts.ok + len(rows) - n_err, counts.errors + n_err
        bar.update(len(rows))
        if throttle:
            time.sleep(throttle)
    return counts


def default_workers(device: torch.device, world: int) -> int:
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) or 2
    return max(1, min(16, cores // world - 1))


def run(
    args: argparse.Namespace, state: PartialState, layout: Layout, spec, out: Path, identity: dict
) -> tuple[Counts, int]:
    device = resolve_device(args.device, state.device)
    workers = default_workers(device, state.num_processes) if args.workers is None else args.workers
    threads = args.threads or default_threads(workers, state.num_processes)
    # the decode workers fork before the backend initialises CUDA; decoding then goes where the model runs
    inflight = int(args.max_inflight_mb * 2**20)
    with DecodePipeline(
        spec, device, workers, args.read_threads, args.timeout, max_inflight_bytes=inflight
    ) as pipe:
        backend = open_backend(args.model, args.backend, device, _providers(args), args.allow_cpu, threads)
        pipe.to(backend.device)
        batch_size = args.batch_size or (256 if backend.device.type == "cuda" else 32)
        if state.is_main_process:
            print(
                f"model: {args.model} | {backend.description} | decoding: {pipe.describe()} | "
                f"batch {batch_size} | {threads} model thread(s) | {state.num_processes} process(es)",
                flush=True,
            )
        done = prepare_output(out, layout, args, identity, state)
        multi = state.num_processes > 1
        target = part_path(out, state.process_index) if multi else out
        share = -(-args.limit // state.num_processes) if args.limit else None
        # A bar on a terminal; in a batch log one line every SERVE_LOG_SECONDS instead of bar frames.
        bar = Progress(
            share,
            f"rank 0/{state.num_processes}" if multi else "classify",
            unit="img",
            enabled=not args.no_progress and state.is_main_process,
            seconds=SERVE_LOG_SECONDS,
            leave=True,
        )
        with RowWriter(target, layout, append=args.resume and not multi, seq=multi) as writer, bar:
            counts = classify(
                pipe, backend, layout, my_items(args, done, state), writer, batch_size, bar, args.throttle
            )
        if state.is_main_process and pipe.report():
            print(pipe.report() + (" (this process)" if multi else ""), flush=True)
    return _gather(counts, state), len(done)


def _max_bytes(args: argparse.Namespace) -> int:
    return int(args.max_file_mb * 2**20)


def _providers(args: argparse.Namespace) -> list[str] | None:
    return [p for p in args.providers.split(",") if p.strip()] if args.providers else None


def _gather(counts: Counts, state: PartialState) -> Counts:
    if state.num_processes == 1:
        return counts
    from accelerate.utils import gather_object

    every = gather_object([(counts.ok, counts.errors)])
    return Counts(sum(o for o, _ in every), sum(e for _, e in every))


def finish(out: Path, layout: Layout, args: argparse.Namespace, state: PartialState) -> None:
    state.wait_for_everyone()
    if state.num_processes > 1 and state.is_main_process:
        merge_parts(out, layout, existing_parts(out), append=args.resume)


def process_state(device: str) -> PartialState:
    """Rank and world size. Without CUDA the state must be told `cpu`, or under a launcher each process
    would think itself alone and all of them would write the same file."""
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:
        raise UserError(
            f"launched as {launched} processes but accelerate set up {state.num_processes}; "
            "launch with `accelerate launch --num_processes N serve/main.py ...`"
        )
    return state


# ─── entry ────────────────────────────────────────────────────────────────────────────────────


def show(args: argparse.Namespace, layout: Layout, spec, state: PartialState) -> int:
    from serve.show import default_figure_path, show_one

    device = resolve_device(args.device, state.device)
    backend = open_backend(args.model, args.backend, device, _providers(args), args.allow_cpu)
    print(f"model: {args.model} | {backend.description}", flush=True)
    out = Path(args.out) if args.out else None
    with output_lock(out, state) if out else contextlib.nullcontext():
        if out:
            identity = _identity(args, layout)
            check_output(out, layout, args, identity, state)
        item = next(iter_items(args.inputs, args.absolute, _max_bytes(args)))
        row = show_one(
            item, backend, spec, layout, Path(args.figure or default_figure_path(item.source)), args.timeout
        )
        if out:
            write_identity(out, identity)
            with RowWriter(out, layout, append=args.resume) as writer:
                writer.write([row])
    return 0


def _identity(args: argparse.Namespace, layout: Layout) -> dict:
    return job_identity(args.model, layout.topk, layout.probs, layout.fmt, args.absolute)


@cli_entry
@ends_process_group
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    check_inputs(args.inputs)
    import_heavy()
    record = load_record(args.model)
    layout = Layout(
        tuple(record.classes),
        tuple(record.display_names),
        args.topk,
        args.probs or args.evaluate,
        output_format(args),
    )
    state = process_state(args.device)
    if args.show:
        return show(args, layout, record.preprocess, state)
    if args.evaluate:
        from serve.evaluate import check_labelled_folder

        check_labelled_folder(args.inputs[0], record.classes)
    out = Path(args.out)
    with output_lock(out, state):  # held until the file is final: merged, summarised, evaluated
        identity = _identity(args, layout)
        check_output(out, layout, args, identity, state)
        start = time.perf_counter()
        try:
            with interrupt_once():  # a second Ctrl-C during cleanup is ignored; the exit has a deadline
                counts, skipped = run(args, state, layout, record.preprocess, out, identity)
        except KeyboardInterrupt:  # Ctrl-C is a normal way to stop: say how to continue, not a traceback
            print(
                f"interrupted: the rows written so far are kept in {out}; rerun with --resume to continue",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_INTERRUPTED
        finish(out, layout, args, state)
        if state.is_main_process:
            _summary(counts, skipped, time.perf_counter() - start, out)
            _warn_if_nothing_found(counts, skipped, args.inputs)
            if args.evaluate:
                _evaluate(out, layout, args)
    return 0


def _summary(counts: Counts, skipped: int, seconds: float, out: Path) -> None:
    n = counts.ok + counts.errors
    resumed = f", {skipped} already in {out.name} skipped" if skipped else ""
    print(
        f"done: {counts.ok} ok, {counts.errors} errors{resumed} in {seconds:.1f} s "
        f"({n / max(seconds, 1e-9):.1f} images/s) -> {out}",
        flush=True,
    )


def _warn_if_nothing_found(counts: Counts, skipped: int, inputs: list[str]) -> None:
    """An empty input is not an error (a drop folder may be empty today) but must not pass in silence."""
    if counts.ok + counts.errors + skipped == 0:
        from core.images import IMAGE_EXTENSIONS

        print(
            f"warning: no images found in {', '.join(inputs)} (looked recursively for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}); nothing was classified",
            file=sys.stderr,
            flush=True,
        )


def _evaluate(out: Path, layout: Layout, args: argparse.Namespace) -> None:
    from serve.evaluate import evaluate_output, summary

    eval_dir = Path(args.eval_dir) if args.eval_dir else out.with_name(f"{out.stem}_eval")
    m = evaluate_output(out, layout, args.inputs[0], args.absolute, eval_dir, args.model)
    print(summary(m, eval_dir), flush=True)


if __name__ == "__main__":
    sys.exit(main())
else:  # imported (tests, tools): every name exists at once, as with plain imports
    import_heavy()
