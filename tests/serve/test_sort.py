"""imgclf-sort: predictions into class folders, a review queue and an error folder; never overwrite, never
twice, undoable, any file name, and the sorted folders are training input again."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from serve.sort import main as sort_main
from tests.serve.helpers import read_rows, save_picture, serve

HEADER = ["path", "status", "label", "display_name", "prob", "accepted", "margin", "entropy", "error"]


def sort(*argv) -> int:
    return sort_main([str(a) for a in argv])


def predictions(path: Path, rows: list[dict], inputs: list[Path] | None = None) -> Path:
    """A predictions CSV as serve writes it, plus the .meta.json naming the classified inputs."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=HEADER, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in HEADER})
    if inputs is not None:
        meta = {"inputs": [str(p.resolve()) for p in inputs], "cwd": str(path.parent)}
        path.with_name(path.name + ".meta.json").write_text(json.dumps(meta))
    return path


def ok(path: str, label: str, prob: float, accepted: bool = True, margin: float = 0.5) -> dict:
    return dict(path=path, status="ok", label=label, prob=prob, accepted=str(accepted).lower(), margin=margin)


def files_under(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
    )


@pytest.fixture
def inbox(tmp_path) -> Path:
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"):
        save_picture(tmp_path / "inbox" / name, seed=len(name) + ord(name[0]))
    return tmp_path / "inbox"


@pytest.fixture
def preds(tmp_path, inbox) -> Path:
    rows = [
        ok("a.jpg", "cat", 0.97),
        ok("b.jpg", "dog", 0.60, accepted=False, margin=0.2),
        ok("c.jpg", "cat", 0.41, accepted=False, margin=0.05),
        ok("d.jpg", "dog", 0.99),
        dict(path="e.jpg", status="error", error="cannot decode"),
    ]
    return predictions(tmp_path / "preds.csv", rows, [inbox])


def test_accepted_rows_go_to_class_folders_the_rest_to_review_and_errors(tmp_path, preds):
    assert sort(preds, "--to", tmp_path / "out") == 0
    assert files_under(tmp_path / "out") == [
        "_errors/e.jpg",
        "_review/cat/c.jpg",
        "_review/dog/b.jpg",
        "_review/review.csv",
        "cat/a.jpg",
        "dog/d.jpg",
    ]
    # hard links by default: the same file, no extra space
    assert os.path.samefile(tmp_path / "out/cat/a.jpg", tmp_path / "inbox/a.jpg")


def test_review_csv_starts_with_the_least_confident(tmp_path, preds):
    sort(preds, "--to", tmp_path / "out")
    review = read_rows(tmp_path / "out/_review/review.csv")
    assert [r["file"] for r in review] == ["_review/cat/c.jpg", "_review/dog/b.jpg"]
    assert [float(r["prob"]) for r in review] == [0.41, 0.60]


def test_a_second_run_adds_nothing_twice_and_only_new_rows_later(tmp_path, preds, inbox):
    out = tmp_path / "out"
    sort(preds, "--to", out)
    first = files_under(out)
    sort(preds, "--to", out)
    assert files_under(out) == first
    save_picture(inbox / "f.jpg", seed=9)
    with open(preds, "a", newline="", encoding="utf-8") as fh:
        csv.DictWriter(fh, fieldnames=HEADER).writerow({**{k: "" for k in HEADER}, **ok("f.jpg", "cat", 0.9)})
    sort(preds, "--to", out)
    assert files_under(out) == sorted([*first, "cat/f.jpg"])


def test_a_name_collision_gets_a_suffix_and_nothing_is_overwritten(tmp_path):
    for sub in ("x", "y"):
        save_picture(tmp_path / sub / "same.jpg", seed=len(sub))
    out = tmp_path / "out"
    (out / "cat").mkdir(parents=True)
    (out / "cat/same.jpg").write_bytes(b"a person's own file")
    rows = [ok("x/same.jpg", "cat", 0.9), ok("y/same.jpg", "cat", 0.9)]
    preds = predictions(tmp_path / "p.csv", rows, [tmp_path / "x", tmp_path / "y"])
    sort(preds, "--to", out)
    assert (out / "cat/same.jpg").read_bytes() == b"a person's own file"
    assert os.path.samefile(out / "cat/same_1.jpg", tmp_path / "x/same.jpg")
    assert os.path.samefile(out / "cat/same_2.jpg", tmp_path / "y/same.jpg")


def test_move_then_undo_puts_every_original_back(tmp_path, preds, inbox):
    before = {p.name: p.read_bytes() for p in inbox.iterdir()}
    out = tmp_path / "out"
    assert sort(preds, "--to", out, "--mode", "move") == 0
    assert sorted(p.name for p in inbox.iterdir()) == []
    assert sort(preds, "--to", out, "--mode", "move") == 0  # already sorted: no complaint, no change
    assert sort(preds, "--to", out, "--undo") == 0
    assert {p.name: p.read_bytes() for p in inbox.iterdir()} == before
    assert files_under(out) == []


@pytest.mark.parametrize("mode", ["copy", "symlink"])
def test_copy_and_symlink_modes_leave_the_originals_and_undo_removes_only_ours(tmp_path, preds, inbox, mode):
    out = tmp_path / "out"
    sort(preds, "--to", out, "--mode", mode)
    placed = out / "cat/a.jpg"
    assert placed.read_bytes() == (inbox / "a.jpg").read_bytes()
    assert placed.is_symlink() == (mode == "symlink")
    assert len(list(inbox.iterdir())) == 5
    sort(preds, "--to", out, "--undo")
    assert files_under(out) == [] and len(list(inbox.iterdir())) == 5


def test_escaped_non_utf8_names_in_the_csv_are_found_and_kept(tmp_path):
    raw = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 name: not valid UTF-8
    folder = tmp_path / "in"
    save_picture(folder / raw, seed=3)
    preds = predictions(tmp_path / "p.csv", [ok("caf\\xe9.jpg", "cat", 0.9)], [folder])
    sort(preds, "--to", tmp_path / "out")
    assert os.listdir(os.fsencode(tmp_path / "out/cat")) == [b"caf\xe9.jpg"]


def test_a_guarded_label_cell_names_the_real_class_folder(tmp_path, inbox):
    preds = predictions(tmp_path / "p.csv", [ok("a.jpg", "'=sum", 0.9)], [inbox])
    sort(preds, "--to", tmp_path / "out")
    assert files_under(tmp_path / "out") == ["=sum/a.jpg"]


def test_a_predictions_file_without_accepted_sorts_every_ok_row_as_accepted(tmp_path, inbox):
    preds = tmp_path / "old.csv"  # written before calibration: no accepted column, no .meta.json
    preds.write_text(
        "path,status,label,display_name,prob,top1_labels,top1_probs,error\na.jpg,ok,cat,cat,0.3,,,\n"
    )
    assert sort(preds, "--to", tmp_path / "out", "--root", inbox) == 0
    assert files_under(tmp_path / "out") == ["cat/a.jpg"]


def test_refuses_a_destination_inside_the_classified_inputs(tmp_path, preds, inbox, capsys):
    with pytest.raises(SystemExit) as exc:
        sort(preds, "--to", inbox / "sorted")
    assert exc.value.code == 2
    assert "inside the classified input" in capsys.readouterr().err
    assert not (inbox / "sorted").exists()


def test_a_label_that_is_not_a_folder_name_is_refused_before_anything_is_written(tmp_path, inbox, capsys):
    preds = predictions(tmp_path / "p.csv", [ok("a.jpg", "cat", 0.9), ok("b.jpg", "../../etc", 0.9)], [inbox])
    with pytest.raises(SystemExit) as exc:
        sort(preds, "--to", tmp_path / "out")
    assert exc.value.code == 2 and "cannot be a folder name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_relative_paths_without_meta_need_root(tmp_path, inbox, capsys):
    preds = predictions(tmp_path / "p.csv", [ok("a.jpg", "cat", 0.9)])
    with pytest.raises(SystemExit) as exc:
        sort(preds, "--to", tmp_path / "out")
    assert exc.value.code == 2 and "--root" in capsys.readouterr().err
    assert sort(preds, "--to", tmp_path / "out", "--root", inbox) == 0


def test_dry_run_writes_nothing(tmp_path, preds, capsys):
    assert sort(preds, "--to", tmp_path / "out", "--dry-run") == 0
    assert "would place 5 files" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_sorts_what_serve_wrote(tmp_path, bundle, photos):
    """End to end: serve a folder, then sort its predictions; every row lands once, by its status."""
    out = tmp_path / "preds.csv"
    assert serve(bundle, photos, "--out", out, "--device", "cpu") == 0
    assert sort(out, "--to", tmp_path / "sorted") == 0
    rows = read_rows(out)
    placed = [p for p in files_under(tmp_path / "sorted") if not p.endswith("review.csv")]
    assert len(placed) == len(rows)
    for row in rows:
        name = os.path.basename(row["path"])
        where = [p for p in placed if os.path.basename(p) == name]
        assert len(where) == 1
        assert where[0].startswith(row["label"] + "/" if row["status"] == "ok" else "_errors/")
