"""`--distribute=multi_worker`: two worker processes on 127.0.0.1 train one DCM pair with
MultiWorkerMirroredStrategy (gRPC collectives over loopback, one CPU replica each).

The first launch is stopped by SIGKILL, the non-chief worker first, while the chief is inside the
checkpoint write of the last epoch (a test hook pauses it there); the relaunched cluster resumes
from the chief's last committed epoch and finishes. Checked: both workers end with identical
weights (each saves them through the `DCM_DEBUG_WEIGHTS_DIR` test hook), the run directory holds
exactly the chief's artefacts, and the non-chief's temporary folder is gone.
"""

import json
import os

import numpy as np
import pytest

from cli_helpers import TINY_TRAIN_FLAGS, Watched, free_ports, h5_arrays

pytestmark = [
    pytest.mark.large,  # runs the scripts in subprocesses: `make test-fast` skips it
    pytest.mark.requires_tensorflow("tf.distribute.MultiWorkerMirroredStrategy"),
]

EPOCHS = 2


@pytest.fixture
def started():
    """The worker processes a test starts; any still running at its end are killed."""
    processes = []
    yield processes
    for process in processes:
        process.kill()


def _cluster(started, args, tmp_root, extra=None):
    """Starts worker 0 (the chief) and worker 1 of a fresh 2-worker cluster."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        env = {"TF_CONFIG": json.dumps(tf_config), "TMPDIR": str(tmp_root),
               "DCM_DEBUG_WEIGHTS_DIR": str(tmp_root / "weights"), **(extra or {})}
        workers.append(Watched("train", *args, extra_env=env))
    started.extend(workers)
    return workers


def test_two_workers_train_identically_resume_and_only_the_chief_writes(small_folder, tmp_path,
                                                                       started):
    model_dir = tmp_path / "run"
    tmp_root = tmp_path / "tmp"  # the workers' TMPDIR: where non-chief scratch folders go
    (tmp_root / "weights").mkdir(parents=True)
    args = ["--method=dcm", f"--dataset=image_folder:{small_folder}", f"--epochs={EPOCHS}",
            "--distribute=multi_worker", "--seed=1", f"--model_dir={model_dir}",
            *TINY_TRAIN_FLAGS]

    # Launch 1: killed while the chief writes the last epoch's checkpoint.
    pause = {"DCM_DEBUG_PAUSE": f"checkpoint@{EPOCHS}:120"}
    chief, worker = _cluster(started, args, tmp_root, pause)
    try:
        chief.wait_for(f"pause at checkpoint (epoch {EPOCHS})", timeout=150)
    finally:
        worker.kill()  # the worker dies first ...
        chief.kill()  # ... and the job is taken down, as a cluster manager would
    meta = json.loads((model_dir / "backup" / "training_metadata.json").read_text())
    assert meta["epoch"] == EPOCHS - 1, meta
    assert not (model_dir / "results.json").exists()
    leftovers = set(os.listdir(tmp_root))  # SIGKILL leaves the killed worker's scratch behind

    # Launch 2: the same command on a new cluster resumes and finishes.
    chief, worker = _cluster(started, args, tmp_root)
    codes = [chief.finish(timeout=150), worker.finish(timeout=60)]
    assert codes == [0, 0], f"chief:\n{chief.describe()}\nworker:\n{worker.describe()}"
    for process in (chief, worker):
        assert f"at epoch {EPOCHS}/{EPOCHS}" in process.stdout, process.describe()
        assert "Epoch 1/" not in process.stdout  # the first epoch was not trained again

    # Both workers end with the same weights (all of them, BN statistics included).
    a = h5_arrays(tmp_root / "weights" / "worker_0.weights.h5")
    b = h5_arrays(tmp_root / "weights" / "worker_1.weights.h5")
    assert a.keys() == b.keys() and len(a) > 20
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6, err_msg=name)

    # Only the chief wrote the run; the worker's scratch folder was removed.
    assert sorted(os.listdir(model_dir)) == [  # the manifest lists what the chief wrote
        ".dcm_manifest.json", "flagfile.txt", "flags.json", "history.csv", "logs", "net1.keras",
        "net2.keras", "results.json", "test_error.png"]
    assert set(os.listdir(tmp_root)) == leftovers
    from dcm_keras import load_network

    net = load_network(str(model_dir / "net1.keras"))  # exported with plain BN layers
    assert not any(getattr(layer, "synchronized", False) for layer in net.layers)
    results = json.loads((model_dir / "results.json").read_text())
    assert results["replicas"] == 2 and results["workers"] == 2
    assert results["synchronized_bn"] is True and results["resumed_at_epoch"] == EPOCHS - 1
    assert [row["epoch"] for row in results["history"]] == list(range(EPOCHS))
