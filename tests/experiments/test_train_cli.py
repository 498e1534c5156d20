"""`python -m experiments.train` end to end: every artefact of a run, re-running, evaluate.py."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from cli_helpers import TINY_TRAIN_FLAGS, describe, run
from experiments.config import RUN_FLAGS, TrainConfig

# The scripts run with TensorFlow-only parts (tf.distribute, op determinism, tf.data); once
# per `make test` is enough, so a session under another Keras backend skips them.
pytestmark = [
    pytest.mark.large,  # runs the scripts in subprocesses: `make test-fast` skips it
    pytest.mark.requires_tensorflow("experiment scripts are tested on TensorFlow"),
]

EPOCHS = 2
HEADS = ("aux1", "aux2", "logits")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, hundred_class_folder):
    """One finished DCM run on a 100-class folder (top-5 is tracked from 100 classes)."""
    model_dir = tmp_path_factory.mktemp("smoke") / "run"
    args = ["--method=dcm", f"--dataset=image_folder:{hundred_class_folder}",
            f"--epochs={EPOCHS}", f"--model_dir={model_dir}", "--batch_size=20",
            *[a for a in TINY_TRAIN_FLAGS if not a.startswith("--batch_size")]]
    result = run("train", *args)
    assert result.returncode == 0, describe(result)
    return model_dir, args, result


def test_run_reports_and_leaves_every_artefact(smoke_run):
    model_dir, _, result = smoke_run
    assert "Test error: net1 (wrn_10_1)" in result.stdout
    # Not a TTY: one line per epoch (verbose=2), no progress bar redraws.
    assert "Epoch 1/2" in result.stdout and "Epoch 2/2" in result.stdout
    assert "\r" not in result.stdout
    for name in ("flags.json", "flagfile.txt", "history.csv", "results.json", "net1.keras",
                 "net2.keras", "test_error.png", "logs"):
        assert (model_dir / name).exists(), name
    # The backup is only needed while training.
    assert not (model_dir / "backup").exists()


def test_flags_are_recorded(smoke_run):
    model_dir, _, _ = smoke_run
    recorded = json.loads((model_dir / "flags.json").read_text())
    assert recorded["method"] == "dcm"
    assert recorded["nets"] == ["wrn_10_1", "wrn_10_1"]
    assert recorded["epochs"] == EPOCHS and recorded["batch_size"] == 20
    assert recorded["lr_boundaries"] == ["1"] and recorded["lr"] == 0.05
    assert recorded["weight_decay"] == 5e-4 and recorded["momentum"] == 0.9
    # Every run flag, in TrainConfig's field order, and nothing else.
    assert list(recorded) == list(RUN_FLAGS)
    assert TrainConfig.from_json(recorded).to_json() == recorded
    flagfile = (model_dir / "flagfile.txt").read_text().splitlines()
    assert "--method=dcm" in flagfile and f"--model_dir={model_dir}" in flagfile
    assert "--epochs=2" in flagfile


def test_results_json(smoke_run):
    model_dir, _, _ = smoke_run
    results = json.loads((model_dir / "results.json").read_text())
    assert results["complete"] is True
    assert results["flags"]["method"] == "dcm"
    assert len(results["connections"]) == 18  # the dense graph of 2 x 3 heads
    assert results["dataset"]["num_classes"] == 100
    assert results["dataset"]["train_examples"] == 200 and results["steps_per_epoch"] == 10
    assert set(results["networks"]) == {"net1", "net2"}
    for net in results["networks"].values():
        assert net["architecture"] == "wrn_10_1"
        assert set(net["test_error"]) == set(HEADS)
        for error in list(net["test_error"].values()) + [net["top5_error"]]:
            assert 0.0 <= error <= 100.0
        assert net["top5_error"] <= net["test_error"]["logits"]
        assert 0 < net["params"] < net["params_with_heads"]
    assert results["wall_time_s"] > 0 and results["process_wall_time_s"] > 0
    assert results["train_images_per_sec"] > 0 and results["epoch_train_seconds_median"] > 0
    assert {"python", "tensorflow", "keras", "dcm_keras", "backend"} <= set(results["versions"])
    assert results["backend"] == results["versions"]["backend"] == "tensorflow"
    history = results["history"]
    assert [row["epoch"] for row in history] == list(range(EPOCHS))
    for row in history:
        for net in ("net1", "net2"):
            for head in HEADS:
                assert 0.0 <= row[f"val_{net}_{head}_acc"] <= 1.0
        assert math.isfinite(row["loss"]) and row["kd_loss"] >= 0
    # Final errors are the last epoch's validation accuracies.
    last = history[-1]
    assert results["networks"]["net2"]["test_error"]["aux1"] == pytest.approx(
        100 * (1 - last["val_net2_aux1_acc"]))
    # The lr drops after epoch 1 (boundary 1) by the default factor 0.2.
    assert [row["learning_rate"] for row in history] == pytest.approx([0.05, 0.01])


def test_exported_networks_load_safely_without_heads(smoke_run):
    from dcm_keras import input_contract, load_network

    model_dir, _, _ = smoke_run
    params = json.loads((model_dir / "results.json").read_text())["networks"]
    for k in (1, 2):
        net = load_network(str(model_dir / f"net{k}.keras"))  # safe_mode=True
        assert not any(layer.name.startswith("aux") for layer in net.layers)
        assert not isinstance(net.output, dict)
        # Raw pixels of an image folder, any size (resized inside) for an 8x8 network.
        assert tuple(net.input_shape) == (None, None, None, 3)
        assert input_contract(net)["image_shape"] == [8, 8, 3]
        assert tuple(net.output.shape) == (None, 100)
        assert net.count_params() == params[f"net{k}"]["params"]
        logits = net(np.zeros((2, 8, 8, 3), np.float32))
        assert np.isfinite(np.asarray(logits)).all()


def test_plot_is_a_png(smoke_run):
    model_dir, _, _ = smoke_run
    data = (model_dir / "test_error.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def _scalars(directory):
    """{tag: [(step, value)]} of the TensorBoard event files in `directory`."""
    import tensorflow as tf

    scalars = {}
    for name in sorted(os.listdir(directory)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            for value in event.summary.value:
                scalar = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                          else value.simple_value)
                scalars.setdefault(value.tag, []).append((event.step, scalar))
    return scalars


def test_tensorboard_logs_every_head_the_losses_and_the_learning_rate(smoke_run):
    model_dir, _, _ = smoke_run
    train = _scalars(model_dir / "logs" / "train")
    validation = _scalars(model_dir / "logs" / "validation")
    for net in ("net1", "net2"):
        for head in HEADS:
            assert f"epoch_{net}_{head}_acc" in train
            assert len(validation[f"epoch_{net}_{head}_acc"]) == EPOCHS
        assert f"epoch_{net}_logits_top5" in validation
    for part in ("loss", "ce_loss", "kd_loss", "wd_loss"):
        assert f"epoch_{part}" in train and f"epoch_{part}" in validation
    assert [v for _, v in sorted(train["epoch_learning_rate"])] == pytest.approx([0.05, 0.01])


def test_rerunning_a_finished_run_does_nothing(smoke_run):
    model_dir, args, _ = smoke_run
    before = (model_dir / "results.json").read_text()
    result = run("train", *args)
    assert result.returncode == 0, describe(result)
    assert "already complete" in result.stdout
    assert "Epoch" not in result.stdout
    assert (model_dir / "results.json").read_text() == before
    # The recorded flagfile reproduces the run: here, it finds the same finished run.
    result = run("train", f"--flagfile={model_dir / 'flagfile.txt'}")
    assert result.returncode == 0 and "already complete" in result.stdout, describe(result)


def test_a_finished_run_whose_export_is_gone_is_refused_then_retrained(smoke_run, tmp_path):
    source, args, _ = smoke_run
    model_dir = tmp_path / "copy"
    shutil.copytree(source, model_dir)
    (model_dir / "net1.keras").unlink()
    args = [a for a in args if not a.startswith("--model_dir")] + [f"--model_dir={model_dir}"]
    before = (model_dir / "results.json").read_text()
    result = run("train", *args)
    assert result.returncode == 1 and "already complete" not in result.stdout, describe(result)
    assert "net1.keras is gone" in result.stderr and "--overwrite" in result.stderr
    assert (model_dir / "results.json").read_text() == before
    result = run("train", *args, "--overwrite")
    assert result.returncode == 0 and "Epoch 2/2" in result.stdout, describe(result)
    assert (model_dir / "net1.keras").is_file() and (model_dir / "net2.keras").is_file()


def test_recorded_errors_carry_no_float32_noise(smoke_run):
    model_dir, _, _ = smoke_run
    networks = json.loads((model_dir / "results.json").read_text())["networks"]
    values = [v for net in networks.values() for v in net["test_error"].values()]
    values += [net["top5_error"] for net in networks.values()]
    assert values and all(round(v, 4) == v for v in values)
    # Each is a count of the 100 test images: a whole percent here.
    assert all(abs(v - round(v)) < 1e-9 for v in values)


def test_evaluate_an_exported_network(smoke_run, hundred_class_folder, tmp_path):
    model_dir, _, _ = smoke_run
    output = tmp_path / "eval" / "net1.json"
    result = run("evaluate", f"--model={model_dir / 'net1.keras'}",
                 f"--dataset=image_folder:{hundred_class_folder}", "--image_size=8",
                 "--split=test", "--batch_size=32", f"--output={output}")
    assert result.returncode == 0, describe(result)
    assert "top-1 error" in result.stdout and "top-5 error" in result.stdout
    evaluation = json.loads(output.read_text())
    assert evaluation["examples"] == 100 and evaluation["split"] == "test"
    final = json.loads((model_dir / "results.json").read_text())["networks"]["net1"]
    # The exported network alone reproduces what training measured with its heads attached.
    assert evaluation["top1_error"] == pytest.approx(final["test_error"]["logits"], abs=1e-3)
    assert evaluation["top5_error"] == pytest.approx(final["top5_error"], abs=1e-3)


def test_a_keras_applications_network_trains_next_to_ours(small_folder, tmp_path):
    """`--nets=keras:NAME,...`: a keras.applications classifier gets heads and trains with DCM."""
    from cli_helpers import tiny_train

    from dcm_keras import load_network, networks

    model_dir = tmp_path / "keras_app"
    proc = run(*tiny_train(small_folder, model_dir, "--nets=keras:MobileNet,wrn_10_1"),
               timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((model_dir / "results.json").read_text())
    assert results["complete"] and results["flags"]["nets"] == ["keras:MobileNet", "wrn_10_1"]
    assert results["history"][-1]["kd_loss"] > 0 and results["history"][-1]["wd_loss"] > 0
    assert results["networks"]["net1"]["architecture"] == "keras:MobileNet"
    assert results["networks"]["net1"]["params"] < results["networks"]["net1"]["params_with_heads"]
    net = load_network(str(model_dir / "net1.keras"))  # safe_mode=True, raw pixels in
    plain = networks.build("keras:MobileNet", 3, input_shape=(8, 8, 3), aux_heads=False)
    # The exported network is the application itself: no head, its own parameter count.
    assert net.count_params() == plain.count_params()
    assert not any(layer.name.startswith("aux") for layer in net.layers)
