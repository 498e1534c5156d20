"""experiments/run_dir.py on its own: folder links, the lock, the manifest, history.csv, and the
consistency checks of a backup (experiments/fault_tolerance.py). No training: fast.

The same promises, through the command line and a hostile user's hands, are in
test_run_dir_cli.py.
"""

import json
import os

import pytest

from experiments import common, run_dir
from experiments.common import UserError
from experiments.run_dir import HistoryFile, RunDirectory


@pytest.fixture
def run(tmp_path):
    folder = RunDirectory.open(str(tmp_path / "run"), lock=True)
    yield folder
    folder.close()


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


def test_a_second_holder_gets_one_line_naming_the_first(run, tmp_path):
    with pytest.raises(UserError, match=rf"in use by another run \(process {os.getpid()}\)"):
        RunDirectory.open(str(tmp_path / "run"), lock=True)
    assert (tmp_path / "run" / run_dir.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    run.close()
    assert not (tmp_path / "run" / run_dir.LOCK_FILE).exists()  # released and removed
    RunDirectory.open(str(tmp_path / "run"), lock=True).close()


def test_a_refused_command_leaves_no_folder_behind(tmp_path):
    folder = RunDirectory.open(str(tmp_path / "new" / "run"), lock=True)
    folder.close()
    assert not (tmp_path / "new").exists()


def test_removal_takes_exactly_what_the_run_recorded(run, tmp_path):
    root = tmp_path / "run"
    logs = run_dir.log_folders(run)
    backup = run.child("backup")
    backup.write_text("epoch0001.weights.h5", "w")
    run.write_json(common.FLAGS_FILE, {"nets": ["a"]})
    (root / "logs" / "train" / "events.out.tfevents.1.host.1.0.v2").write_text("e")
    run_dir.record_event_files(logs)
    mine = {"notes.tmp": "n", "backup/important.weights.h5": "i", "backup/notes.tmp": "n",
            "logs/mine.txt": "m", "logs/train/mine.txt": "m", "net3.keras": "x"}
    for name, text in mine.items():
        (root / name).write_text(text)
    run.remove_recorded()
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == sorted([*mine, run_dir.LOCK_FILE, run_dir.MANIFEST_FILE])


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
        folder.adopt(run_dir.run_files(2))
        folder.remove_recorded()
    finally:
        folder.close()
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == [run_dir.MANIFEST_FILE, "backup/mine.txt", "logs/train/mine.txt", "x.txt"]


def test_history_replaced_by_a_link_is_rewritten_whole_with_a_warning(run, tmp_path, capsys):
    outside = tmp_path / "outside.csv"
    outside.write_text("the user's file")
    history = HistoryFile(run)
    history.add(0, {"loss": 2.0, "epoch_seconds": 3.0})
    path = tmp_path / "run" / common.HISTORY_FILE
    path.unlink()
    path.symlink_to(outside)
    history.add(1, {"loss": 1.0, "epoch_seconds": 4.0, "val_acc": 0.5})
    assert "was replaced or removed during the run" in capsys.readouterr().out
    assert outside.read_text() == "the user's file" and not path.is_symlink()
    rows = common.read_history(str(path))
    assert [r["epoch"] for r in rows] == [0, 1] and sum(r["epoch_seconds"] for r in rows) == 7.0
    again = HistoryFile(run).rows  # a resumed run reads them back
    assert [(r["epoch"], r["loss"]) for r in again] == [(0, 2.0), (1, 1.0)]


def test_flags_json_never_holds_bare_nan(run):
    with pytest.raises(ValueError, match="not JSON compliant"):
        run.write_json(common.FLAGS_FILE, {"lr": float("inf")})
    assert run.lstat(common.FLAGS_FILE) is None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A backup folder holding a committed checkpoint of epoch 2 of a tiny model."""
    import keras
    import numpy as np

    from experiments.fault_tolerance import AtomicBackupAndRestore

    root = tmp_path_factory.mktemp("checkpoint")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((4, 2), "float32")
    callback = AtomicBackupAndRestore(str(root / "backup"), epochs=2, identity={"epochs": 2})
    model.fit(x, x[:, :1], epochs=2, verbose=0, callbacks=[callback])
    return root / "backup", model


@pytest.mark.parametrize("change,words", [
    ({"epoch": 99}, "claims 99 finished epochs, but the run has 2"),
    ({"epoch": 1}, "names the weights file 'epoch0002.weights.h5', not 'epoch0001"),
    ({"size": 5}, "are not the ones committed"),
    ({"sha256": "0" * 64}, "are not the ones committed"),
    ({"flags": {"epochs": 3}}, r"made with other flags \(epochs: 3 -> 2\)"),
    ({"weights": "../x.weights.h5"}, "names the weights file"),
])
def test_an_inconsistent_backup_is_refused(checkpoint, tmp_path, change, words):
    import shutil

    from experiments.fault_tolerance import AtomicBackupAndRestore, CheckpointError

    folder, model = checkpoint
    copy = tmp_path / "backup"
    shutil.copytree(folder, copy)
    meta = json.loads((copy / "training_metadata.json").read_text())
    (copy / "training_metadata.json").write_text(json.dumps({**meta, **change}))
    callback = AtomicBackupAndRestore(str(copy), epochs=2, identity={"epochs": 2})
    with pytest.raises(CheckpointError, match=words) as error:
        callback.restore(model)
    assert "pass --overwrite to train the run again from the start" in str(error.value)
    (copy / "training_metadata.json").write_text(json.dumps(meta))
    assert AtomicBackupAndRestore(str(copy), epochs=2, identity={"epochs": 2}).restore(model) == 2


def test_a_weights_file_replaced_by_a_link_is_refused(checkpoint, tmp_path):
    import shutil

    from experiments.fault_tolerance import AtomicBackupAndRestore, CheckpointError

    folder, model = checkpoint
    copy = tmp_path / "backup"
    shutil.copytree(folder, copy)
    real = tmp_path / "elsewhere.weights.h5"
    (copy / "epoch0002.weights.h5").rename(real)
    (copy / "epoch0002.weights.h5").symlink_to(real)  # the same bytes, through a link
    with pytest.raises(CheckpointError, match="epoch0002.weights.h5 are a symbolic link.*"
                                              "pass --overwrite"):
        AtomicBackupAndRestore(str(copy), epochs=2, identity={"epochs": 2}).restore(model)


FLAGS = {"method": "dcm", "nets": ["wrn_10_1", "wrn_10_1"], "epochs": 2, "model_dir": "x"}


def test_an_empty_model_dir_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    # `--model_dir=$UNSET` wrote flags.json, history.csv, logs/, ... into the current folder.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="--model_dir is empty"):
        run_dir.TrainingRun.open("", FLAGS, overwrite=False, chief=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,text", [(common.FLAGS_FILE, '{"a":' * 100000),
                                       (common.FLAGS_FILE, "[" * 200000)])
def test_deeply_nested_flags_json_is_damaged_not_a_recursion_error(tmp_path, name, text):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / name).write_text(text)
    with pytest.raises(UserError, match=r"flags.json is damaged \(nested deeper than Python"):
        run_dir.TrainingRun.open(str(folder), FLAGS, overwrite=False, chief=True)


def test_a_deeply_nested_or_ill_typed_manifest_is_only_warned_about(tmp_path, capsys):
    for text in ["[" * 200000, '{"files": 5}']:
        folder = tmp_path / f"run{len(text)}"
        folder.mkdir()
        (folder / run_dir.MANIFEST_FILE).write_text(text)
        run = RunDirectory.open(str(folder), lock=True)
        try:
            assert run.recorded() == []
        finally:
            run.close()
        assert "is unreadable; only the files this run writes" in capsys.readouterr().out


def test_deeply_nested_backup_metadata_is_a_checkpoint_error(tmp_path):
    from experiments.fault_tolerance import CheckpointError, read_metadata

    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "training_metadata.json").write_text("[" * 200000)
    with pytest.raises(CheckpointError, match="is unreadable .*nested deeper.*--overwrite"):
        read_metadata(str(backup))


def test_history_swapped_for_a_link_that_reuses_its_inode_number_is_noticed(
        run, tmp_path, capsys, monkeypatch):
    # A link put at the name once the file was removed can get the freed inode number; identity
    # by (st_dev, st_ino) alone then took it for the run's own file and warned of nothing.
    history = HistoryFile(run)
    history.add(0, {"loss": 2.0})
    path = tmp_path / "run" / common.HISTORY_FILE
    written = os.lstat(path)
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.csv")
    # The run holds its file open, so the number is not free for the link to take ...
    assert os.lstat(path).st_ino != written.st_ino
    real = run.lstat

    def reused(name):  # ... and where a file system reuses it anyway, the type still differs
        info = real(name)
        if name != common.HISTORY_FILE or info is None:
            return info
        return os.stat_result((info.st_mode, written.st_ino, written.st_dev) + tuple(info)[3:])

    monkeypatch.setattr(run, "lstat", reused)
    history.add(1, {"loss": 1.0})
    assert "replaced or removed during the run (it is now a symbolic link" in \
        capsys.readouterr().out
    monkeypatch.undo()
    assert not path.is_symlink() and [r["epoch"] for r in common.read_history(str(path))] == [0, 1]
    history.close()


def test_the_start_up_disk_check_counts_a_new_optimizer_and_an_existing_checkpoint(
        checkpoint, tmp_path, monkeypatch):
    # A fresh run's estimate left out the optimizer state (no state before the first step), so
    # two 5.55 MiB checkpoints passed a 9.1 MiB check; a resume asked for two checkpoints of room
    # beside the one it replaces; and the message named /proc/self/fd/N.
    import shutil
    from collections import namedtuple

    import keras

    from experiments.fault_tolerance import AtomicBackupAndRestore

    folder, model = checkpoint
    fresh = keras.Sequential([keras.Input((1000,)), keras.layers.Dense(1000)])  # 4 MB
    fresh.compile(optimizer=keras.optimizers.SGD(momentum=0.9), loss="mse")
    callback = AtomicBackupAndRestore(str(tmp_path / "fresh"))
    callback.set_model(fresh)
    unbuilt = callback.checkpoint_bytes()
    fresh.optimizer.build(fresh.trainable_variables)
    assert unbuilt > 0.99 * callback.checkpoint_bytes()  # was about 0.6 of it

    copy = tmp_path / "backup"
    shutil.copytree(folder, copy)
    resumed = AtomicBackupAndRestore(str(copy), epochs=2)
    resumed.set_model(model)
    existing = (copy / "epoch0002.weights.h5").stat().st_size
    usage = namedtuple("usage", "total used free")
    free = 2 * resumed.checkpoint_bytes() - existing  # just enough beside the existing one
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(0, 0, free))
    run = RunDirectory.open(str(tmp_path / "run"), lock=False, manifest=False)
    try:
        resumed.check_room(run)
        monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(0, 0, free - 1))
        with pytest.raises(OSError, match=f"and {tmp_path / 'run'} has") as caught:
            resumed.check_room(run)
        assert "/proc/self" not in str(caught.value)
    finally:
        run.close()
