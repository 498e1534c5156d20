"""experiments/rundir/directory.py: the run folder's lock and its manifest. No training."""

import os

import pytest

from experiments.common import UserError
from experiments.rundir import directory, files
from experiments.rundir.directory import RunDirectory
from experiments.rundir.run import log_folders, record_event_files, run_files


def test_a_second_holder_gets_one_line_naming_the_first(run, tmp_path):
    with pytest.raises(UserError, match=rf"in use by another run \(process {os.getpid()}\)"):
        RunDirectory.open(str(tmp_path / "run"), lock=True)
    assert (tmp_path / "run" / directory.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    run.close()
    assert not (tmp_path / "run" / directory.LOCK_FILE).exists()  # released and removed
    RunDirectory.open(str(tmp_path / "run"), lock=True).close()


def test_a_refused_command_leaves_no_folder_behind(tmp_path):
    folder = RunDirectory.open(str(tmp_path / "new" / "run"), lock=True)
    folder.close()
    assert not (tmp_path / "new").exists()


def test_removal_takes_exactly_what_the_run_recorded(run, tmp_path):
    root = tmp_path / "run"
    logs = log_folders(run)
    backup = run.child("backup")
    backup.write_text("epoch0001.weights.h5", "w")
    run.write_json(files.FLAGS_FILE, {"nets": ["a"]})
    (root / "logs" / "train" / "events.out.tfevents.1.host.1.0.v2").write_text("e")
    record_event_files(logs)
    mine = {"notes.tmp": "n", "backup/important.weights.h5": "i", "backup/notes.tmp": "n",
            "logs/mine.txt": "m", "logs/train/mine.txt": "m", "net3.keras": "x"}
    for name, text in mine.items():
        (root / name).write_text(text)
    run.remove_recorded()
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == sorted([*mine, directory.LOCK_FILE, directory.MANIFEST_FILE])


def test_a_run_from_before_the_manifest_is_adopted(tmp_path):
    root = tmp_path / "old"
    (root / "backup").mkdir(parents=True)
    (root / "logs" / "train").mkdir(parents=True)
    for name in ("flags.json", "net1.keras", "backup/epoch0002.weights.h5",
                 "backup/training_metadata.json", "backup/mine.txt",
                 "logs/train/events.out.tfevents.1.h.2.0.v2", "logs/train/mine.txt", "x.txt"):
        (root / name).write_text("x")
    folder = RunDirectory.open(str(root), lock=True)
    try:
        folder.adopt(run_files(2))
        folder.remove_recorded()
    finally:
        folder.close()
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == [directory.MANIFEST_FILE, "backup/mine.txt", "logs/train/mine.txt", "x.txt"]


def test_a_deeply_nested_or_ill_typed_manifest_is_only_warned_about(tmp_path, capsys):
    for text in ["[" * 200000, '{"files": 5}']:
        folder = tmp_path / f"run{len(text)}"
        folder.mkdir()
        (folder / directory.MANIFEST_FILE).write_text(text)
        run = RunDirectory.open(str(folder), lock=True)
        try:
            assert run.recorded() == []
        finally:
            run.close()
        assert "is unreadable; only the files this run writes" in capsys.readouterr().out
