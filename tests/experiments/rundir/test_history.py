"""experiments/rundir/history.py: history.csv, rewritten whole every epoch, and read back."""

import os

from experiments.rundir import files
from experiments.rundir.history import HistoryFile, read_history


def test_read_history_keeps_the_last_row_of_each_epoch(tmp_path):
    # A kill between logging epoch 1 and backing it up re-runs epoch 1 after the resume; the line
    # cut short by a kill is skipped.
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_net1_logits_acc\n"
                    "0,2.0,0.5\n"
                    "1,1.5,0.6\n"
                    "1,1.4,0.65\n"
                    "2,1.2,NA\n"
                    "3")
    rows = read_history(str(path))
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[1]["loss"] == 1.4 and rows[1]["val_net1_logits_acc"] == 0.65
    assert rows[2]["val_net1_logits_acc"] != rows[2]["val_net1_logits_acc"]  # NaN
    assert read_history(str(tmp_path / "missing.csv")) == []


def test_history_replaced_by_a_link_is_rewritten_whole_with_a_warning(run, tmp_path, capsys):
    outside = tmp_path / "outside.csv"
    outside.write_text("the user's file")
    history = HistoryFile(run)
    history.add(0, {"loss": 2.0, "epoch_seconds": 3.0})
    path = tmp_path / "run" / files.HISTORY_FILE
    path.unlink()
    path.symlink_to(outside)
    history.add(1, {"loss": 1.0, "epoch_seconds": 4.0, "val_acc": 0.5})
    assert "was replaced or removed during the run" in capsys.readouterr().out
    assert outside.read_text() == "the user's file" and not path.is_symlink()
    rows = read_history(str(path))
    assert [r["epoch"] for r in rows] == [0, 1] and sum(r["epoch_seconds"] for r in rows) == 7.0
    again = HistoryFile(run).rows  # a resumed run reads them back
    assert [(r["epoch"], r["loss"]) for r in again] == [(0, 2.0), (1, 1.0)]


def test_history_swapped_for_a_link_that_reuses_its_inode_number_is_noticed(
        run, tmp_path, capsys, monkeypatch):
    # A link put at the name once the file was removed can get the freed inode number; identity
    # by (st_dev, st_ino) alone then took it for the run's own file and warned of nothing.
    history = HistoryFile(run)
    history.add(0, {"loss": 2.0})
    path = tmp_path / "run" / files.HISTORY_FILE
    written = os.lstat(path)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.csv")
    # The run holds its file open, so the number is not free for the link to take ...
    assert os.lstat(path).st_ino != written.st_ino
    real = run.lstat

    def reused(name):  # ... and where a file system reuses it anyway, the type still differs
        info = real(name)
        if name != files.HISTORY_FILE or info is None:
            return info
        return os.stat_result((info.st_mode, written.st_ino, written.st_dev) + tuple(info)[3:])

    monkeypatch.setattr(run, "lstat", reused)
    history.add(1, {"loss": 1.0})
    assert "replaced or removed during the run (it is now a symbolic link" in \
        capsys.readouterr().out
    monkeypatch.undo()
    assert not path.is_symlink() and [r["epoch"] for r in read_history(str(path))] == [0, 1]
    history.close()
