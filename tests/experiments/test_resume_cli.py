"""A training process killed with SIGKILL resumes where it stopped and ends where an uninterrupted
run ends (under --deterministic)."""

import csv
import json
import os
import signal
import time

import numpy as np
import pytest

from cli_helpers import TINY_TRAIN_FLAGS, describe, run, start

# The scripts run with TensorFlow-only parts (tf.distribute, op determinism, tf.data); once
# per `make test` is enough, so a session under another Keras backend skips them.
pytestmark = [
    pytest.mark.large,  # runs the scripts in subprocesses: `make test-fast` skips it
    pytest.mark.requires_tensorflow("experiment scripts are tested on TensorFlow"),
]

EPOCHS = 4


def _args(folder, model_dir):
    # DML keeps tracing cheap (no auxiliary heads) while still distilling between the networks.
    return ["--method=dml", f"--dataset=image_folder:{folder}", f"--epochs={EPOCHS}",
            "--deterministic", "--seed=3", f"--model_dir={model_dir}", *TINY_TRAIN_FLAGS]


def _finished_epochs(model_dir) -> int:
    try:
        with open(os.path.join(model_dir, "backup", "training_metadata.json")) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError):
        return 0  # not written yet, or caught mid-write


def test_killed_run_resumes_and_matches_an_uninterrupted_run(small_folder, tmp_path):
    from dcm_keras import load_network

    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight = start("train", *_args(small_folder, straight_dir))
    victim = start("train", *_args(small_folder, killed_dir))
    try:
        deadline = time.monotonic() + 180
        while _finished_epochs(killed_dir) < 1:
            assert victim.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no epoch finished within 180 s"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    killed_at = _finished_epochs(killed_dir)
    assert 1 <= killed_at < EPOCHS, "the kill came too late to test resuming"
    assert not (killed_dir / "results.json").exists()

    resumed = run("train", *_args(small_folder, killed_dir))
    assert resumed.returncode == 0, describe(resumed)
    assert f"at epoch {killed_at + 1}/{EPOCHS}" in resumed.stdout
    assert "Epoch 1/" not in resumed.stdout  # the first epoch was not trained again
    assert f"Epoch {killed_at + 1}/{EPOCHS}" in resumed.stdout

    out, err = straight.communicate(timeout=240)
    assert straight.returncode == 0, f"{out[-2000:]}\n{err[-2000:]}"

    # history.csv holds every epoch exactly once, across the kill.
    with open(killed_dir / "history.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == list(range(EPOCHS))
    results = json.loads((killed_dir / "results.json").read_text())
    assert results["resumed_at_epoch"] == killed_at
    assert [row["epoch"] for row in results["history"]] == list(range(EPOCHS))

    for name in ("net1.keras", "net2.keras"):
        a = load_network(str(straight_dir / name)).get_weights()
        b = load_network(str(killed_dir / name)).get_weights()
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    straight_results = json.loads((straight_dir / "results.json").read_text())
    assert straight_results["networks"]["net1"]["test_error"] == \
        results["networks"]["net1"]["test_error"]


def test_a_comparison_config_may_set_backup_every(tmp_path):
    """--backup_every is an operational flag: not recorded, but a comparison may set it."""
    from experiments import comparison_config
    from experiments.config import OPERATIONAL_FLAGS, RUN_FLAGS

    assert OPERATIONAL_FLAGS == ("backup_every",) and "backup_every" not in RUN_FLAGS
    assert "backup_every" in comparison_config.TRAIN_FLAGS
    path = tmp_path / "quick.json"
    path.write_text(json.dumps({"rows": [["wrn_10_1", "wrn_10_1"]], "methods": ["baseline"],
                                "seeds": [0], "train_flags": {"backup_every": 5}}))
    config = comparison_config.load_config("demo", str(path), None, None, None, None)
    assert config["train_flags"] == {"backup_every": 5}
