"""Helpers for the command-line experiment tests: subprocesses, their output, image folders.

The scripts run as users run them, `python -m experiments.<script>` in a subprocess. Networks are
WRN-10-1 on 8x8 images so that a two-epoch run takes seconds on two cores.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# The TensorFlow/absl C++ runtime prints these on stderr whatever TF_CPP_MIN_LOG_LEVEL says.
NOISE_PREFIXES = ("WARNING: All log messages before absl::InitializeLog()", "I0000", "W0000",
                  "E0000")

# A tiny but complete DCM run: two WRN-10-1 with heads, 2 epochs, lr drop after the first.
TINY_TRAIN_FLAGS = ["--nets=wrn_10_1,wrn_10_1", "--image_size=8", "--batch_size=8",
                    "--lr_boundaries=1", "--lr=0.05"]


def env() -> dict:
    variables = dict(os.environ)
    variables["TF_CPP_MIN_LOG_LEVEL"] = "3"
    variables["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO),
                                                            variables.get("PYTHONPATH")]))
    return variables


def command(module: str, *args: str) -> List[str]:
    return [sys.executable, "-m", f"experiments.{module}", *args]


def run(module: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs `python -m experiments.<module> args...` to completion, capturing its output."""
    return subprocess.run(command(module, *args), cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def start(module: str, *args: str) -> subprocess.Popen:
    """Starts `python -m experiments.<module> args...` without waiting for it."""
    return subprocess.Popen(command(module, *args), cwd=REPO, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def message_lines(stderr: str) -> List[str]:
    """The lines of stderr written by our code or absl's flag parser (runtime noise removed)."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(NOISE_PREFIXES)]


def describe(result) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


def write_image_folder(root: Path, classes: int, train_per_class: int, test_per_class: int,
                       size: int = 8, seed: int = 0) -> str:
    """An image_folder dataset of PNGs: class c brightens its own band of a noisy image."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for c in range(classes):
            directory = root / split / f"class{c:03d}"
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rng.integers(0, 100, (size, size, 3)).astype(np.uint8)
                row = c % size
                image[row] = np.minimum(image[row].astype(int) + 150, 255).astype(np.uint8)
                png = tf.io.encode_png(image).numpy()
                (directory / f"{i}.png").write_bytes(png)
    return str(root)
