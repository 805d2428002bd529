"""M24: a full disk names the file the user knows (best/, last/, a run file, the --out CSV), never a temp or
part file the program made for itself: the user cannot find or act on those names."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from core.fsio import atomic_dir, atomic_path


def _full(name: str | None = None) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", *([name] if name else []))


def test_m24_atomic_dir_names_the_final_folder(tmp_path):
    dest = tmp_path / "best"
    with pytest.raises(OSError) as exc, atomic_dir(dest) as tmp:
        raise _full(str(tmp / "model.safetensors"))
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(dest / "model.safetensors")


def test_m24_atomic_dir_names_the_folder_when_the_writer_gives_no_name(tmp_path):
    dest = tmp_path / "best"
    with pytest.raises(OSError) as exc, atomic_dir(dest):
        raise RuntimeError("safetensors: No space left on device")
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(dest)


def test_m24_atomic_path_names_the_file_for_a_wrapped_error(tmp_path):
    dest = tmp_path / "curves.png"
    with pytest.raises(OSError) as exc, atomic_path(dest):
        raise RuntimeError("libpng write error: Disk quota exceeded")
    assert exc.value.filename == str(dest)


def test_m24_atomic_dir_leaves_other_errors_alone(tmp_path):
    with pytest.raises(ValueError, match="not a disk"), atomic_dir(tmp_path / "best"):
        raise ValueError("not a disk problem")


def test_m24_train_last_checkpoint_names_last_not_its_temp_folder(tmp_path):
    from train.checkpoint import TrainerState, save_last

    class FullAccelerator:  # accelerate's save_state writes into the temp folder, which fills the disk
        is_main_process = True

        def wait_for_everyone(self):
            pass

        def save_state(self, folder):
            raise _full(str(Path(folder) / "model.safetensors"))

    with pytest.raises(OSError) as exc:
        save_last(FullAccelerator(), tmp_path, TrainerState())
    assert exc.value.filename == str(tmp_path / "last" / "model.safetensors")


def test_m24_serve_part_file_names_the_out_file(tmp_path):
    from serve.writer import Layout, RowWriter, part_path

    out = tmp_path / "preds.csv"
    writer = RowWriter(part_path(out, 1), Layout(classes=("a", "b"), display_names=("a", "b")), seq=True)

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, text):
            raise _full()

        def __getattr__(self, name):
            return getattr(self.fh, name)

    writer.fh = FullDisk(writer.fh)
    row = {"path": "x.png", "status": "ok", "error": "", "seq": 0}
    with pytest.raises(OSError) as exc:
        writer.write([row])
    writer.close()
    assert exc.value.filename == str(out), exc.value.filename


def _failing_open(module, monkeypatch):
    """`open` in `module` gives files whose writes fail as a full disk's do: a buffered write names no file."""
    real = open

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise _full()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def __getattr__(self, name):
            return getattr(self.fh, name)

    def fake_open(path, mode="r", *args, **kwargs):
        fh = real(path, mode, *args, **kwargs)
        return FullDisk(fh) if set(mode) & set("wa") else fh  # reading still works

    monkeypatch.setattr(module, "open", fake_open, raising=False)


def test_m24_serve_merge_of_parts_names_the_out_file(tmp_path, monkeypatch):
    import numpy as np

    from serve import writer

    layout = writer.Layout(classes=("a", "b"), display_names=("a", "b"))
    out = tmp_path / "preds.csv"
    with writer.RowWriter(part_path := writer.part_path(out, 0), layout, seq=True) as w:
        w.write([{**writer.ok_row(layout, "x.png", np.array([0.5, 0.5])), "seq": 0}])
    out.write_text(writer.header(layout))  # a resumed file: the merge appends to it
    _failing_open(writer, monkeypatch)
    with pytest.raises(OSError) as exc:
        writer.merge_parts(out, layout, [part_path], append=True)
    assert exc.value.filename == str(out) and part_path.exists()  # the rows wait in their part for a rerun


def test_m24_serve_embeddings_name_the_embeddings_file_not_its_work_file(tmp_path, monkeypatch):
    import numpy as np

    from serve import embeddings

    _failing_open(embeddings, monkeypatch)
    dest = tmp_path / "emb.npy"
    writer = embeddings.EmbeddingWriter(dest)
    with pytest.raises(OSError) as exc:
        writer.add(["x.png"], np.zeros((1, 4), dtype=np.float32))
    writer.abort()
    assert exc.value.filename == str(dest)


def test_m24_sort_manifest_write_names_the_manifest(tmp_path, monkeypatch):
    from serve import sort_files

    _failing_open(sort_files, monkeypatch)
    manifest = sort_files.Manifest(tmp_path)
    with pytest.raises(OSError) as exc:
        manifest.write("intent", src="a.png", dest="cat/a.png")
    assert exc.value.filename == str(tmp_path / sort_files.MANIFEST)
