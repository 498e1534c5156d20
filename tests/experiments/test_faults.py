"""Faults: SIGKILL at three points of one short run, and a loss that turns NaN.

One run is killed three times and relaunched with the same command each time:

1. at a random moment after epoch 2 has started (a uniform delay; it may land in training,
   validation or the epoch-2 checkpoint write);
2. inside the checkpoint write of the first epoch the relaunch trains, between the new weights
   file and the metadata that commits it (the `DCM_DEBUG_PAUSE` test hook holds it there): the
   moment Keras's own BackupAndRestore would leave weights and epoch counter out of step;
3. while the trained networks are exported (after net1.keras, before results.json).

Every relaunch must resume from the last committed epoch (read from the backup after each kill) and
the final run must end with the same weights as an uninterrupted run under --deterministic. With
Keras's BackupAndRestore, kill 2 would make the relaunch train an epoch twice; before the backup
was restored for export, kill 3 would have exported untrained networks.

`--backup_every=N` backs up every Nth epoch and the last one only; a kill between two backups
resumes from the earlier one and still ends with the uninterrupted run's results.
"""

import csv
import json
import os
import random
import time

import numpy as np
import pytest

from cli_helpers import TINY_TRAIN_FLAGS, Watched, h5_arrays, message_lines, one_line_error, \
    run_all

pytestmark = [
    pytest.mark.large,  # runs the scripts in subprocesses: `make test-fast` skips it
    pytest.mark.requires_tensorflow("experiment scripts are tested on TensorFlow"),
]

EPOCHS = 4
TIMEOUT = 180
PAUSE = "DCM_DEBUG_PAUSE"


def _args(folder, model_dir, *extra):
    # DML keeps tracing cheap (no auxiliary heads) while still distilling between the networks.
    return ["--method=dml", f"--dataset=image_folder:{folder}", f"--epochs={EPOCHS}",
            "--deterministic", "--seed=5", f"--model_dir={model_dir}", *TINY_TRAIN_FLAGS, *extra]


def _committed(model_dir) -> int:
    path = model_dir / "backup" / "training_metadata.json"
    return json.loads(path.read_text())["epoch"] if path.exists() else 0


def _check_resumed(process, committed):
    if committed:
        assert f"at epoch {committed + 1}/{EPOCHS}" in process.stdout, process.describe()
    else:
        assert "Resuming" not in process.stdout, process.describe()
    trained = [line for line in process.stdout.splitlines() if line.startswith("Epoch ")]
    if trained:  # the first epoch trained is the one after the last committed epoch
        assert trained[0].startswith(f"Epoch {committed + 1}/"), process.describe()


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory, small_folder):
    """A run whose learning rate jumps to 5e6 after epoch 1 (started first, checked later)."""
    model_dir = tmp_path_factory.mktemp("nan") / "run"
    process = Watched("train", *_args(small_folder, model_dir, "--epochs=3", "--lr_boundaries=1",
                                      "--lr_decay=1e8"))
    yield model_dir, process
    process.kill()


@pytest.fixture
def launch():
    """Starts watched scripts and kills whichever is still running when the test ends."""
    started = []

    def start(*args, **kwargs):
        started.append(Watched(*args, **kwargs))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def test_kills_at_three_points_resume_to_the_uninterrupted_result(small_folder, tmp_path,
                                                                  nan_run, launch):
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    weights = {name: tmp_path / f"weights_{name}" for name in ("straight", "killed")}
    for folder in weights.values():
        folder.mkdir()
    straight = launch("train", *_args(small_folder, straight_dir),
                      extra_env={"DCM_DEBUG_WEIGHTS_DIR": str(weights["straight"])})

    # Kill 1: a random moment after epoch 2 has started.
    victim = launch("train", *_args(small_folder, killed_dir))
    victim.wait_for("Epoch 2/", TIMEOUT)
    delay = random.uniform(0.0, 0.5)
    time.sleep(delay)
    victim.kill()
    first = _committed(killed_dir)
    assert 1 <= first < EPOCHS, f"killed {delay:.2f} s into epoch 2 ({first} epochs committed)"

    # Kill 2: inside the checkpoint write of the next epoch, before its commit.
    victim = launch("train", *_args(small_folder, killed_dir),
                     extra_env={"DCM_DEBUG_PAUSE": f"checkpoint@{first + 1}:120"})
    victim.wait_for(f"pause at checkpoint (epoch {first + 1})", TIMEOUT)
    victim.kill()
    _check_resumed(victim, first)
    assert _committed(killed_dir) == first  # the torn checkpoint was not committed
    # The uncommitted weights of epoch first + 1 are in the folder, and must be ignored.
    assert (killed_dir / "backup" / f"epoch{first + 1:04d}.weights.h5").exists()

    # Kill 3: during the export, after all epochs are trained.
    victim = launch("train", *_args(small_folder, killed_dir),
                     extra_env={"DCM_DEBUG_PAUSE": "export:120"})
    victim.wait_for("pause at export", TIMEOUT)
    victim.kill()
    _check_resumed(victim, first)
    assert _committed(killed_dir) == EPOCHS
    assert (killed_dir / "net1.keras").exists() and not (killed_dir / "results.json").exists()

    # The last relaunch only exports, from the backup.
    victim = launch("train", *_args(small_folder, killed_dir),
                     extra_env={"DCM_DEBUG_WEIGHTS_DIR": str(weights["killed"])})
    assert victim.finish(TIMEOUT) == 0, victim.describe()
    assert f"all {EPOCHS} epochs are trained; exporting from the backup" in victim.stdout
    assert "Epoch " not in victim.stdout
    assert straight.finish(TIMEOUT) == 0, straight.describe()

    # Same final weights as the uninterrupted run: the whole DCM (networks and heads, BN
    # statistics) and the exported networks.
    a = h5_arrays(weights["straight"] / "chief_0.weights.h5")
    b = h5_arrays(weights["killed"] / "chief_0.weights.h5")
    assert a.keys() == b.keys() and len(a) > 20
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6, err_msg=name)
    from dcm_keras import load_network

    for name in ("net1.keras", "net2.keras"):
        x = load_network(str(straight_dir / name)).get_weights()
        y = load_network(str(killed_dir / name)).get_weights()
        for u, v in zip(x, y):
            np.testing.assert_allclose(u, v, rtol=0, atol=1e-6)
    results = json.loads((killed_dir / "results.json").read_text())
    expected = json.loads((straight_dir / "results.json").read_text())
    assert results["resumed_at_epoch"] == EPOCHS
    for net in ("net1", "net2"):
        assert results["networks"][net]["test_error"] == expected["networks"][net]["test_error"]
    assert [row["epoch"] for row in results["history"]] == list(range(EPOCHS))
    assert not (killed_dir / "backup").exists()


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(nan_run):
    model_dir, process = nan_run
    code = process.finish(TIMEOUT)
    assert code != 0, process.describe()
    lines = message_lines(process.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: the training loss became "), lines
    message = lines[0]
    assert "at epoch 2, batch " in message and "diverged" in message and "--lr" in message
    assert "the backup of epoch 1" in message and "Traceback" not in process.stderr

    # Nothing of the diverged epoch was kept: the backup still commits epoch 1 ...
    assert _committed(model_dir) == 1
    meta = json.loads((model_dir / "backup" / "training_metadata.json").read_text())
    checkpoint = model_dir / "backup" / meta["weights"]
    arrays = h5_arrays(checkpoint)
    assert arrays and all(np.isfinite(a).all() for a in arrays.values()
                          if np.issubdtype(a.dtype, np.floating))
    with open(model_dir / "history.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0]
    assert not (model_dir / "results.json").exists()
    assert not list(model_dir.glob("net*.keras"))

    # ... and it loads into the run's model (weights and optimizer state).
    import keras

    from dcm_keras import DCM, networks

    nets = [networks.build("wrn_10_1", 3, (8, 8, 3), aux_heads=False) for _ in range(2)]
    dcm = DCM(nets, connections="final")
    dcm.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    dcm.optimizer.build(dcm.trainable_variables)
    dcm.load_weights(str(checkpoint))
    assert all(np.isfinite(w).all() for w in dcm.get_weights())


def _backups(model_dir) -> set:
    """What the backup folder holds: the committed metadata and weights files."""
    folder = model_dir / "backup"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _checkpointed_epochs(process) -> list:
    """The epochs whose checkpoint the process wrote (with DCM_DEBUG_PAUSE=checkpoint:0)."""
    return [int(line.split("(epoch ")[1].rstrip(")\n")) for line in process.out
            if line.startswith("[debug] pause at checkpoint")]


def test_backup_every_backs_up_every_nth_and_the_last_epoch(tmp_path):
    """The callback alone: with backup_every=3 over 5 epochs, only epochs 3 and 5 are committed;
    a `fit` stopped early (stop_training) still backs up the last epoch it trained."""
    import keras

    from experiments.rundir.checkpoints import AtomicBackupAndRestore, committed_epoch

    class Spy(keras.callbacks.Callback):  # after the backup: sees what it left on disk
        def __init__(self, folder, stop_after=None):
            super().__init__()
            self.folder, self.stop_after, self.seen = folder, stop_after, []

        def on_epoch_end(self, epoch, logs=None):
            self.seen.append((committed_epoch(self.folder), sorted(os.listdir(self.folder))
                              if os.path.isdir(self.folder) else []))
            if epoch + 1 == self.stop_after:
                self.model.stop_training = True

    x = np.random.default_rng(0).normal(size=(8, 2)).astype("float32")
    for stop_after, expected in ((None, 5), (4, 4)):
        folder = str(tmp_path / f"backup_{stop_after}")
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
        spy = Spy(folder, stop_after)
        model.fit(x, x[:, :1], epochs=5, batch_size=4, verbose=0,
                  callbacks=[AtomicBackupAndRestore(folder, backup_every=3), spy])
        committed = [epoch for epoch, _ in spy.seen]
        assert committed == [0, 0, 3, 3, 5][:len(committed)], spy.seen
        assert spy.seen[2][1] == ["epoch0003.weights.h5", "training_metadata.json"]
        assert committed_epoch(folder) == expected
        assert sorted(os.listdir(folder)) == [f"epoch{expected:04d}.weights.h5",
                                              "training_metadata.json"]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="backup_every must be an integer >= 1"):
            AtomicBackupAndRestore(str(tmp_path), backup_every=bad)


def test_backup_every_resumes_from_the_last_backup(small_folder, tmp_path, launch):
    """--backup_every=3 over 5 epochs: backups after epochs 3 and 5 only. A kill after epoch 4
    resumes from epoch 3 (under another --backup_every: it is not a recorded flag) and ends with
    the uninterrupted run's results."""
    epochs, checkpoints = 5, "checkpoint:0"  # print a line at every checkpoint write
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"

    def args(model_dir, every):
        return _args(small_folder, model_dir, f"--epochs={epochs}", f"--backup_every={every}")

    straight = launch("train", *args(straight_dir, 3), extra_env={PAUSE: checkpoints})
    victim = launch("train", *args(killed_dir, 3),
                    extra_env={PAUSE: f"{checkpoints},epoch_end@4:120"})
    victim.wait_for("pause at epoch_end (epoch 4)", TIMEOUT)
    # Epoch 4 is trained and not backed up: the backup still holds epoch 3, and only it.
    assert _committed(killed_dir) == 3
    assert _backups(killed_dir) == {"epoch0003.weights.h5", "training_metadata.json"}
    victim.kill()
    assert _checkpointed_epochs(victim) == [3]

    resumed = launch("train", *args(killed_dir, 2), extra_env={PAUSE: checkpoints})
    assert resumed.finish(TIMEOUT) == 0, resumed.describe()
    assert f"Resuming {killed_dir} at epoch 4/{epochs}." in resumed.stdout, resumed.describe()
    assert [line.split()[1] for line in resumed.out if line.startswith("Epoch ")] == [
        f"4/{epochs}", f"5/{epochs}"]
    assert _checkpointed_epochs(resumed) == [4, 5]  # every 2nd epoch now, and the last
    assert straight.finish(TIMEOUT) == 0, straight.describe()
    assert _checkpointed_epochs(straight) == [3, 5]

    results = json.loads((killed_dir / "results.json").read_text())
    expected = json.loads((straight_dir / "results.json").read_text())
    assert results.keys() == expected.keys()
    assert results["resumed_at_epoch"] == 3 and expected["resumed_at_epoch"] == 0
    assert [row["epoch"] for row in results["history"]] == list(range(epochs))
    for net in ("net1", "net2"):
        assert results["networks"][net]["test_error"] == expected["networks"][net]["test_error"]
    # Not a recorded flag: flags.json is as before --backup_every existed.
    assert "backup_every" not in json.loads((killed_dir / "flags.json").read_text())
    assert "--backup_every=2" in (killed_dir / "flagfile.txt").read_text().splitlines()
    assert not (killed_dir / "backup").exists()


def test_backup_every_below_one_is_refused(small_folder, tmp_path):
    outcomes = run_all({str(bad): ["train", *_args(small_folder, tmp_path / f"run{bad}"),
                                   f"--backup_every={bad}"] for bad in (0, -1)}, tmp_path)
    for bad, outcome in outcomes.items():
        line = one_line_error(outcome)
        assert line.startswith(f"FATAL Flags parsing error: flag --backup_every={bad}: ")
        assert "positive integer" in line, line
        assert not outcome[2].exists()  # nothing written


def test_a_pause_ends_when_its_release_file_appears(tmp_path, monkeypatch, capsys):
    import threading
    import time

    from experiments.rundir.checkpoints import debug_pause

    release = tmp_path / "release"
    monkeypatch.setenv(PAUSE, "epoch_end@2:30")
    monkeypatch.setenv("DCM_DEBUG_RELEASE", str(release))
    start = time.monotonic()
    debug_pause("epoch_end", epoch=1)  # another epoch: no pause
    assert capsys.readouterr().out == ""
    timer = threading.Timer(0.5, release.touch)
    timer.start()
    debug_pause("epoch_end", epoch=2)
    timer.join()
    assert capsys.readouterr().out == "[debug] pause at epoch_end (epoch 2)\n"
    assert 0.5 <= time.monotonic() - start < 10  # released, not the 30 s
