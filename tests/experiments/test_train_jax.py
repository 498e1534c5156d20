"""`experiments.train` on the JAX backend with TensorFlow unavailable (as on a JAX-only GPU box)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cli_helpers import REPO, describe, env, message_lines, one_line_error

from dcm_keras import data

HAVE_FASHION = os.path.isfile(os.path.join(data.FASHION_MNIST_DEBIAN_DIR,
                                           "train-images-idx3-ubyte.gz"))
pytestmark = [
    pytest.mark.large,  # drives the scripts in subprocesses: `make test-fast` skips it
    pytest.mark.skipif(not HAVE_FASHION, reason="Debian dataset-fashion-mnist missing"),
    # Compares the JAX-trained export with a TensorFlow evaluation: once per `make test`.
    pytest.mark.requires_tensorflow("checks the JAX run against the TensorFlow backend"),
]
# `import tensorflow` fails in the script, as if it were not installed.
WITHOUT_TF = ("import runpy, sys; sys.modules['tensorflow'] = None; sys.argv[0] = 'train'; "
              "runpy.run_module('experiments.train', run_name='__main__')")
FLAGS = ["--method=dcm", "--nets=wrn_10_1,wrn_10_1", "--dataset=fashion_mnist",
         "--max_train_examples=256", "--max_test_examples=200", "--batch_size=64",
         "--epochs=3", "--lr_boundaries=2", "--lr=0.05"]


def train_without_tf(*args: str) -> subprocess.CompletedProcess:
    # XLA's cheaper compile: what is checked here is the script, not the compiler's output
    # (tests/test_backend_jax.py compares JAX, compiled as users compile it, with TensorFlow).
    variables = {**env(), "KERAS_BACKEND": "jax", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    return subprocess.run([sys.executable, "-c", WITHOUT_TF, *args], cwd=REPO, env=variables,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("jax") / "run"
    result = train_without_tf(*FLAGS, "--eval_every=2", f"--model_dir={model_dir}")
    assert result.returncode == 0, describe(result)
    return model_dir, result


def test_trains_and_records_the_backend(jax_run):
    model_dir, result = jax_run
    assert "no TensorBoard logs" in result.stdout
    assert not (model_dir / "logs").exists()
    results = json.loads((model_dir / "results.json").read_text())
    assert results["backend"] == "jax" and results["versions"]["backend"] == "jax"
    assert results["dataset"]["train_examples"] == 256 and results["steps_per_epoch"] == 4
    history = results["history"]
    # --eval_every=2: epoch 2 (index 1) is evaluated, epochs 1 and 3 are not (null in JSON);
    # the final test error then comes from an evaluation after training.
    assert [row["val_net1_logits_acc"] is None for row in history] == [True, False, True]
    for net in ("net1", "net2"):
        error = results["networks"][net]["test_error"]["logits"]
        # Better than chance (90 % +- 2.1 on 200 images) after 3 epochs: measured 78.5 and
        # 74.5 % (2026-12-03).
        assert 0.0 <= error < 85.0, error
    assert [round(row["learning_rate"], 4) for row in history] == [0.05, 0.05, 0.01]


def test_export_loads_on_tensorflow_with_the_same_test_error(jax_run):
    import keras

    from dcm_keras import load_network

    model_dir, _ = jax_run
    results = json.loads((model_dir / "results.json").read_text())
    net = load_network(str(model_dir / "net1.keras"))
    ds = data.load("fashion_mnist", "test", batch_size=100, max_examples=200)
    info = data.get_info("fashion_mnist")

    def pixels(x):  # net1.keras takes raw pixel values: undo the pipeline's normalisation
        return np.round((x.numpy() * np.array(info.std) + np.array(info.mean)) * 255.0)

    predictions = np.concatenate([np.argmax(keras.ops.convert_to_numpy(
        net(pixels(x), training=False)), -1) for x, _ in ds])
    labels = np.concatenate([y.numpy() for _, y in ds])
    error = 100.0 * np.mean(predictions != labels)
    # Same weights, same test images: measured equal (78.5 %), but another backend's arithmetic
    # may flip one borderline image (the closest top-2 logits there were 9e-5 apart): 1 of 200.
    assert abs(error - results["networks"]["net1"]["test_error"]["logits"]) <= 0.5


def test_rerun_is_a_no_op(jax_run):
    model_dir, _ = jax_run
    result = train_without_tf(*FLAGS, "--eval_every=2", f"--model_dir={model_dir}")
    assert result.returncode == 0, describe(result)
    assert "already complete" in result.stdout


@pytest.mark.parametrize("flag,needle", [("--distribute=mirrored", "tf.distribute"),
                                         ("--deterministic", "op determinism")])
def test_tensorflow_only_flags_are_refused(tmp_path, flag, needle):
    result = train_without_tf(*FLAGS, flag, f"--model_dir={tmp_path / 'run'}")
    assert result.returncode != 0
    line = one_line_error((result.returncode, message_lines(result.stderr)))
    assert needle in line and "KERAS_BACKEND=tensorflow" in line and "jax" in line, line
    assert not (tmp_path / "run" / "flags.json").exists()  # refused before anything is written
