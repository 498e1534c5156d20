"""experiments/rundir/folder.py: a folder held open, its subfolders and its writes. No training.

The same promises, through the command line and a hostile user's hands, are in
tests/experiments/test_run_dir_cli.py.
"""

import os

import pytest

from experiments.common import UserError
from experiments.rundir import files
from experiments.rundir.directory import RunDirectory


def _outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "important.weights.h5").write_text("the user's weights")
    (outside / "notes.tmp").write_text("the user's notes")
    return outside


def _untouched(outside):
    assert sorted(p.name for p in outside.iterdir()) == ["important.weights.h5", "notes.tmp"]
    assert (outside / "important.weights.h5").read_text() == "the user's weights"
    assert (outside / "notes.tmp").read_text() == "the user's notes"


def test_a_subfolder_that_became_a_link_is_refused_not_written_through(run, tmp_path):
    outside = _outside(tmp_path)
    backup = run.child("backup")
    backup.write_text("a.txt", "one")
    os.rename(backup.path, str(tmp_path / "run" / "moved"))
    os.symlink(outside, backup.path)
    with pytest.raises(UserError, match=r"backup was replaced .* now a symbolic link to .*"
                                         r"outside\); refusing to write through it"):
        backup.write_text("b.txt", "two")
    with pytest.raises(UserError, match="backup was replaced"):
        run.child("backup")
    _untouched(outside)
    # Opened afresh, a link is refused too.
    run.close()
    again = RunDirectory.open(str(tmp_path / "run"), lock=True)
    try:
        with pytest.raises(UserError, match="backup is a symbolic link .*refusing"):
            again.child("backup", create=False)
        again.remove_recorded()  # the sweep does not follow the link either
    finally:
        again.close()
    _untouched(outside)


def test_flags_json_never_holds_bare_nan(run):
    with pytest.raises(ValueError, match="not JSON compliant"):
        run.write_json(files.FLAGS_FILE, {"lr": float("inf")})
    assert run.lstat(files.FLAGS_FILE) is None
