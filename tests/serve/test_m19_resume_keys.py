"""M19: --resume never duplicates. A row's path is relative to the output's recorded base, so adding, dropping
or respelling inputs never changes the key of an image already written, and every reader of the CSV (resume,
--evaluate, imgclf-sort) finds each row's file."""

from __future__ import annotations

import json
import os

from serve.row_paths import choose_base, merged_inputs, recorded_base, resolve_row, row_path
from serve.sort import main as sort_main
from tests.serve.helpers import read_rows, save_picture, serve


def _tree(root, names):
    for i, name in enumerate(names):
        save_picture(root / name, seed=i, size=(24, 20))


def test_m19_resume_with_an_extra_input_adds_it_and_duplicates_nothing(bundle, tmp_path, monkeypatch):
    a, b = tmp_path / "A", tmp_path / "B"
    _tree(a, ["1/a1.png", "2/a2.png", "x.png"])
    _tree(b, ["1/b1.png", "x.png"])  # x.png in both: the two must stay two rows
    out = tmp_path / "p.csv"
    assert serve(bundle, a, "--out", out, "--workers", 0, "--no-progress") == 0
    first = [r["path"] for r in read_rows(out)]
    assert sorted(first) == ["1/a1.png", "2/a2.png", "x.png"]

    # a second resume from another folder, with the inputs respelled and reordered: same keys
    monkeypatch.chdir(b)
    assert serve(bundle, ".", f"{a}/", "--out", out, "--resume", "--workers", 0, "--no-progress") == 0
    rows = read_rows(out)
    paths = [r["path"] for r in rows]
    assert paths[:3] == first
    assert len(paths) == len(set(paths)) == 5
    assert sorted(paths[3:]) == ["../B/1/b1.png", "../B/x.png"]
    meta = json.loads((tmp_path / "p.csv.meta.json").read_text())
    assert meta["base"] == str(a) and meta["inputs"] == [str(a), str(b)]

    # nothing new: a third resume classifies nothing
    monkeypatch.chdir(tmp_path)
    assert serve(bundle, b, a, "--out", out, "--resume", "--workers", 0, "--no-progress") == 0
    assert len(read_rows(out)) == 5

    # the sort command finds every file, from both inputs
    dest = tmp_path / "sorted"
    assert sort_main([str(out), "--to", str(dest), "--mode", "copy"]) == 0
    placed = [p.name for p in dest.rglob("*.png")]
    assert len(placed) == 5 and {"a1.png", "a2.png", "b1.png", "x.png"} <= set(placed)


def test_m19_evaluate_scores_every_resumed_row_from_the_labelled_folder(bundle, tmp_path):
    labelled, other = tmp_path / "test", tmp_path / "inbox"
    _tree(labelled, ["1/a.png", "2/b.png"])
    _tree(other, ["1/c.png"])  # under a class-like folder, but not in the labelled folder
    out = tmp_path / "p.csv"
    assert serve(bundle, other, "--out", out, "--probs", "--workers", 0, "--no-progress") == 0
    code = serve(bundle, labelled, "--out", out, "--resume", "--evaluate", "--workers", 0, "--no-progress")
    assert code == 0
    metrics = json.loads((tmp_path / "p_eval" / "test_metrics.json").read_text())
    assert metrics["data"]["excluded"] == 1  # inbox/1/c.png is not a labelled image
    assert sum(map(sum, metrics["confusion_matrix"])) == 2


def test_m19_row_paths_round_trip_through_the_base(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    (a / "sub").mkdir(parents=True)
    b.mkdir()
    assert choose_base([str(a)]) == str(a)
    assert choose_base([str(a / "sub" / "f.jpg")]) == str(a / "sub")  # a file counts as its folder
    assert choose_base([str(a), str(b), "https://x.org/i.jpg"]) == str(tmp_path)
    assert choose_base(["https://x.org/i.jpg"]) is None
    for f in [a / "sub" / "f.jpg", b / "g\udcff.jpg", tmp_path / "h.jpg"]:
        cell = row_path(str(f), str(a))
        assert resolve_row(cell, str(a)) == str(f)
    assert row_path(str(b / "g.jpg"), str(a)) == "../B/g.jpg"
    assert row_path(str(b / "g.jpg"), str(a), absolute=True) == str(b / "g.jpg")
    assert resolve_row("https://x.org/i.jpg", None) == "https://x.org/i.jpg"
    assert resolve_row("rel.jpg", None) is None
    assert merged_inputs([str(a)], [str(b), str(a), "https://x.org/i.jpg"]) == [
        str(a),
        str(b),
        "https://x.org/i.jpg",
    ]


def test_m19_an_output_recorded_before_the_base_keeps_the_rule_that_wrote_it(tmp_path):
    a = tmp_path / "A"
    a.mkdir()
    assert recorded_base({"inputs": [str(a)], "cwd": "/elsewhere"}) == (str(a), [str(a)])
    base, inputs = recorded_base({"inputs": [str(a), "https://x.org/i.jpg"], "cwd": str(tmp_path)})
    assert (base, inputs) == (str(tmp_path), [str(a)])
    assert recorded_base({"inputs": [str(a)], "base": str(tmp_path)})[0] == str(tmp_path)
    assert os.path.isabs(recorded_base({"base": "/x"})[0])


def test_m19_the_skipped_count_is_this_runs_images_found_already_written(bundle, tmp_path, capsys):
    a, b = tmp_path / "A", tmp_path / "B"
    _tree(a, ["1/a1.png", "2/a2.png", "x.png"])
    _tree(b, ["1/b1.png"])
    out = tmp_path / "p.csv"
    assert serve(bundle, a, b, "--out", out, "--workers", 0, "--no-progress") == 0
    capsys.readouterr()
    # only B again: 1 of its images is skipped, not the 4 rows the file holds
    assert serve(bundle, b, "--out", out, "--resume", "--workers", 0, "--no-progress") == 0
    assert "done: 0 ok, 0 errors, 1 already in p.csv skipped" in capsys.readouterr().out
    assert len(read_rows(out)) == 4
