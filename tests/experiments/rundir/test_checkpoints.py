"""experiments/rundir/checkpoints.py on its own: the consistency checks of a backup and the
start-up disk check. A tiny Keras model, no DCM training: fast."""

import json

import pytest

from experiments.rundir.directory import RunDirectory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A backup folder holding a committed checkpoint of epoch 2 of a tiny model."""
    import keras
    import numpy as np

    from experiments.rundir.checkpoints import AtomicBackupAndRestore

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

    from experiments.rundir.checkpoints import AtomicBackupAndRestore, CheckpointError

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

    from experiments.rundir.checkpoints import AtomicBackupAndRestore, CheckpointError

    folder, model = checkpoint
    copy = tmp_path / "backup"
    shutil.copytree(folder, copy)
    real = tmp_path / "elsewhere.weights.h5"
    (copy / "epoch0002.weights.h5").rename(real)
    (copy / "epoch0002.weights.h5").symlink_to(real)  # the same bytes, through a link
    with pytest.raises(CheckpointError, match="epoch0002.weights.h5 are a symbolic link.*"
                                              "pass --overwrite"):
        AtomicBackupAndRestore(str(copy), epochs=2, identity={"epochs": 2}).restore(model)


def test_deeply_nested_backup_metadata_is_a_checkpoint_error(tmp_path):
    from experiments.rundir.checkpoints import CheckpointError, read_metadata

    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "training_metadata.json").write_text("[" * 200000)
    with pytest.raises(CheckpointError, match="is unreadable .*nested deeper.*--overwrite"):
        read_metadata(str(backup))


def test_the_start_up_disk_check_counts_a_new_optimizer_and_an_existing_checkpoint(
        checkpoint, tmp_path, monkeypatch):
    # A fresh run's estimate left out the optimizer state (no state before the first step), so
    # two 5.55 MiB checkpoints passed a 9.1 MiB check; a resume asked for two checkpoints of room
    # beside the one it replaces; and the message named /proc/self/fd/N.
    import shutil
    from collections import namedtuple

    import keras

    from experiments.rundir.checkpoints import AtomicBackupAndRestore

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
