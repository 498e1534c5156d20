"""What a careless or hostile user does cannot lose data, escape the run folder or crash the scripts.

- `--overwrite` deletes only the files the replaced run wrote; links planted in the run folder
  while a run trains are replaced, never written through;
- a comparison config can set only the documented run flags (no `flagfile` pointing a run
  elsewhere);
- malformed `--connections` edges and a read-only or full `--model_dir` end with one error line:
  a full disk keeps the last committed checkpoint, and a rerun with space resumes from it;
- subsets of an image folder hold every class, and results.json says which and how many.

The read-only and full-disk tests mount small tmpfs file systems (root only; those two are
skipped where mounting is refused, the others need no mount).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from cli_helpers import Watched, h5_arrays, message_lines, one_line_error, run_all, tiny_train

pytestmark = [
    pytest.mark.large,  # runs the scripts in subprocesses: `make test-fast` skips it
    pytest.mark.requires_tensorflow("experiment scripts are tested on TensorFlow"),
]
TIMEOUT = 180


def _mount(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")


def _remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _used_kib(folder: Path) -> int:
    stat = os.statvfs(folder)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize // 1024


# --- refused before anything trains -----------------------------------------------------------


@pytest.fixture(scope="module")
def refusals(tmp_path_factory, small_folder):
    root = tmp_path_factory.mktemp("refusals")
    elsewhere = root / "elsewhere_run"
    (root / "evil.txt").write_text(f"--model_dir={elsewhere}\n--overwrite\n")
    config = {"name": "evil", "rows": [["wrn_10_1", "wrn_10_1"]], "methods": ["baseline"],
              "seeds": [0], "train_flags": {"flagfile": str(root / "evil.txt"), "epochs": 1}}
    (root / "evil.json").write_text(json.dumps(config))
    config["train_flags"] = {"epochs": 1, "learning_rate": 0.1}
    (root / "typo.json").write_text(json.dumps(config))

    users = root / "users_folder"  # the names a run writes, but not a run: no flags.json
    (users / "backup").mkdir(parents=True)
    (users / "backup" / "k.txt").write_text("keep")
    (users / "results.json").write_text('{"my": "data"}')
    (users / "net1.keras").write_text("mine")
    bad_edges = {"dict": '[{"a": 1}]', "null": '[["net1_logits", "net2_logits", null]]',
                 "short": "[[1]]", "text": '[["net1_logits", "net2_logits", "abc"]]'}
    cases = {f"edge_{k}": tiny_train(small_folder, root / f"e_{k}", f"--connections={v}")
             for k, v in bad_edges.items()}
    cases.update({
        "compare_flagfile": ["compare", f"--config={root / 'evil.json'}",
                             f"--work_dir={root / 'work'}"],
        "compare_unknown": ["compare", f"--config={root / 'typo.json'}",
                            f"--work_dir={root / 'work'}"],
        "users_folder": tiny_train(small_folder, users),
    })
    return run_all(cases, root), root


@pytest.mark.parametrize("case", ["dict", "null", "short", "text"])
def test_malformed_connection_edges_get_one_line_naming_the_flag(refusals, case):
    error = one_line_error(refusals[0][f"edge_{case}"])
    assert "--connections edge 1" in error


def test_a_comparison_config_sets_only_run_flags(refusals):
    outcomes, root = refusals
    error = one_line_error(outcomes["compare_flagfile"])
    assert "may not set 'flagfile'" in error and "Valid: " in error and "dataset" in error
    assert "may not set 'learning_rate'" in one_line_error(outcomes["compare_unknown"])
    assert not (root / "elsewhere_run").exists() and not (root / "work").exists()


def test_a_folder_with_the_users_files_under_run_names_is_not_taken_over(refusals):
    outcomes, root = refusals
    error = one_line_error(outcomes["users_folder"])
    assert "backup, net1.keras, results.json but no flags.json" in error and "--overwrite" in error
    users = root / "users_folder"
    assert (users / "backup" / "k.txt").read_text() == "keep"
    assert (users / "results.json").read_text() == '{"my": "data"}'
    assert (users / "net1.keras").read_text() == "mine"
    assert sorted(p.name for p in users.iterdir()) == ["backup", "net1.keras", "results.json"]


def test_a_read_only_model_dir_gets_one_line(tmp_path, small_folder):
    read_only = tmp_path / "read_only"
    _mount(read_only, "ro,size=1m")  # only this test and the full-disk one need a mount
    try:
        error = one_line_error(run_all({"read_only": tiny_train(small_folder,
                                                                 read_only / "run")},
                                       tmp_path)["read_only"])
    finally:
        _umount(read_only)
    assert "Read-only file system" in error


# --- a run with --overwrite while links are planted in its folder -----------------------------


@pytest.fixture(scope="module")
def overwritten(tmp_path_factory, small_folder):
    """A run replacing an earlier one, with links planted in its folder while it trains."""
    root = tmp_path_factory.mktemp("overwrite")
    model_dir = root / "run"
    model_dir.mkdir()
    old = {"flags.json": json.dumps({"method": "dml", "nets": ["wrn_10_1", "wrn_10_1"],
                                     "epochs": 7}),
           "results.json": json.dumps({"complete": True}), "net1.keras": "old net1",
           "net2.keras": "old net2", "history.csv": "epoch,loss\n0,1.0\n"}
    mine = {"network_best.keras": "the user's best network", "net_old_experiment.keras": "kept",
            "net3.keras": "not written by a two-network run", "notes.txt": "mine"}
    for name, text in {**old, **mine}.items():
        (model_dir / name).write_text(text)
    victims = root / "victims"
    victims.mkdir()
    planted = ["test_error.png", "results.json", "net1.keras", "net2.keras"]  # written later
    for name in planted:
        (victims / name).write_text(f"victim {name}")

    process = Watched(*tiny_train(small_folder, model_dir, "--overwrite",
                                           "--max_train_examples=24", "--max_test_examples=6"),
                      extra_env={"DCM_DEBUG_PAUSE": "checkpoint@1:4"})
    try:
        process.wait_for("[debug] pause at checkpoint", timeout=TIMEOUT)
        for name in planted:  # the run has started and checked its folder: plant links now
            path = model_dir / name
            if path.exists() or path.is_symlink():
                path.unlink()
            path.symlink_to(victims / name)
        code = process.finish(timeout=TIMEOUT)
    finally:
        process.kill()
    return model_dir, victims, planted, mine, process, code


def test_overwrite_deletes_only_the_replaced_runs_files(overwritten):
    model_dir, _, _, mine, process, code = overwritten
    assert code == 0, process.describe()
    for name, text in mine.items():
        assert (model_dir / name).read_text() == text, name
    assert json.loads((model_dir / "flags.json").read_text())["method"] == "dcm"


def test_links_planted_during_a_run_are_replaced_not_followed(overwritten):
    model_dir, victims, planted, _, process, code = overwritten
    assert code == 0, process.describe()
    for name in planted:
        assert (victims / name).read_text() == f"victim {name}", name
        assert not (model_dir / name).is_symlink() and (model_dir / name).stat().st_size > 0
    assert json.loads((model_dir / "results.json").read_text())["complete"]
    assert not [p.name for p in model_dir.iterdir() if ".tmp" in p.name]


def test_subsets_hold_every_class_and_are_recorded(overwritten):
    model_dir, *_ = overwritten
    dataset = json.loads((model_dir / "results.json").read_text())["dataset"]
    assert dataset["classes"] == ["class000", "class001", "class002"]
    assert dataset["train_class_counts"] == {"class000": 8, "class001": 8, "class002": 8}
    assert dataset["test_class_counts"] == {"class000": 2, "class001": 2, "class002": 2}


def test_boundaries_past_the_last_epoch_are_announced(overwritten):
    process = overwritten[4]
    assert "--lr_boundaries 1 are not below --epochs=1" in process.stdout  # epochs 0 .. 0


# --- a disk that fills up -----------------------------------------------------------------------


def _tight(folder: Path) -> None:
    """Leaves 128 KiB free: enough for a metadata commit, not for a checkpoint or a network."""
    _remount(folder, f"size={_used_kib(folder) + 128}k")


def test_a_full_disk_keeps_the_last_checkpoint_and_a_rerun_resumes(tmp_path, small_folder):
    disk = tmp_path / "disk"
    _mount(disk, "size=64m")
    try:
        model_dir = disk / "run"
        # DML: no auxiliary heads to trace in each of the three launches; a checkpoint and a
        # network are still far over the 128 KiB left free.
        args = tiny_train(small_folder, model_dir, "--epochs=2", "--method=dml")
        # 1. The disk fills after epoch 1's checkpoint: epoch 2's cannot be written.
        first = Watched(*args, extra_env={"DCM_DEBUG_PAUSE": "checkpoint@1:3"})
        first.wait_for("[debug] pause at checkpoint", timeout=TIMEOUT)
        _tight(disk)
        assert first.finish(timeout=TIMEOUT) != 0
        error = one_line_error((first.proc.returncode, message_lines(first.stderr)))
        assert "not enough disk space for the checkpoint of epoch 2" in error, first.describe()
        assert "backup of epoch 1" in error and "intact" in error
        meta = json.loads((model_dir / "backup" / "training_metadata.json").read_text())
        assert meta["epoch"] == 1
        assert h5_arrays(model_dir / "backup" / meta["weights"])  # complete and readable

        # 2. With space again the run resumes at epoch 2; the disk fills after net1.keras.
        _remount(disk, "size=64m")
        second = Watched(*args, extra_env={"DCM_DEBUG_PAUSE": "export:3"})
        second.wait_for("[debug] pause at export", timeout=TIMEOUT)
        assert "Resuming" in second.stdout and "at epoch 2/2" in second.stdout
        _tight(disk)
        assert second.finish(timeout=TIMEOUT) != 0
        error = one_line_error((second.proc.returncode, message_lines(second.stderr)))
        assert "No space left on device" in error and "backup of epoch 2" in error, error
        assert not (model_dir / "results.json").exists()

        # 3. A rerun with space exports from the backup.
        _remount(disk, "size=64m")
        third = Watched(*args)
        assert third.finish(timeout=TIMEOUT) == 0, third.describe()
        assert "all 2 epochs are trained" in third.stdout
        assert json.loads((model_dir / "results.json").read_text())["complete"]
        assert not [p.name for p in model_dir.iterdir() if ".tmp" in p.name]
    finally:
        _umount(disk)


# --- evaluate.py on what keras.callbacks.ModelCheckpoint writes -------------------------------


def test_evaluate_scores_every_network_of_a_whole_dcm_file(tmp_path, small_folder):
    import keras
    import numpy as np

    from cli_helpers import describe, run
    from dcm_keras import DCM, data, networks

    keras.utils.set_random_seed(3)
    dcm = DCM([networks.build("wrn_10_1", 3, input_shape=(8, 8, 3)) for _ in range(2)])
    dcm.compile(optimizer="sgd")
    path = tmp_path / "best.keras"
    dcm.save(path)
    output = tmp_path / "eval.json"
    result = run("evaluate", f"--model={path}", f"--dataset=image_folder:{small_folder}",
                 "--image_size=8", f"--output={output}", timeout=TIMEOUT)
    assert result.returncode == 0, describe(result)
    scores = json.loads(output.read_text())["networks"]
    test = data.load(f"image_folder:{small_folder}", "test", batch_size=64, image_size=8)
    images, labels = next(iter(test))
    predicted = dcm.predict(images, verbose=0)
    for k in (1, 2):
        wrong = np.mean(np.argmax(predicted[f"net{k}_logits"], -1) != labels.numpy())
        assert scores[f"net{k}"]["top1_error"] == pytest.approx(100 * wrong, abs=1e-3)
        assert f"best.keras net{k} on image_folder" in result.stdout


def test_evaluate_takes_size_and_classes_from_a_shipped_network(overwritten, small_folder,
                                                                tmp_path):
    import shutil

    from cli_helpers import describe, run

    model_dir = overwritten[0]
    renamed = tmp_path / "renamed"
    shutil.copytree(small_folder, renamed)
    for split in ("train", "test"):
        (renamed / split / "class000").rename(renamed / split / "zclass")
    model = f"--model={model_dir / 'net1.keras'}"
    same = run("evaluate", model, f"--dataset=image_folder:{small_folder}", timeout=TIMEOUT)
    other = run("evaluate", model, f"--dataset=image_folder:{renamed}", timeout=TIMEOUT)
    assert same.returncode == 0, describe(same)  # no --image_size: the network's own 8x8
    assert "(12 images)" in same.stdout
    error = one_line_error((other.returncode, message_lines(other.stderr)))
    assert "trained on the classes class000, class001, class002" in error and "zclass" in error


def test_ctrl_c_ends_with_one_line_and_the_run_resumes(tmp_path, small_folder):
    import signal

    model_dir = tmp_path / "run"
    args = tiny_train(small_folder, model_dir, "--epochs=2", "--method=dml")  # no heads to trace
    first = Watched(*args, extra_env={"DCM_DEBUG_PAUSE": "checkpoint@2:30"})
    try:
        first.wait_for("[debug] pause at checkpoint (epoch 2)", timeout=TIMEOUT)
        first.proc.send_signal(signal.SIGINT)
        assert first.finish(timeout=60) == 130, first.describe()
    finally:
        first.kill()
    error = one_line_error((first.proc.returncode, message_lines(first.stderr)))
    assert "interrupted; re-running the same command resumes" in error
    second = Watched(*args)
    assert second.finish(timeout=TIMEOUT) == 0, second.describe()
    assert "at epoch 2/2" in second.stdout
    assert json.loads((model_dir / "results.json").read_text())["complete"]


def test_only_the_disk_tests_mount():
    """Mounting needs root (CAP_SYS_ADMIN): only the tests that need a read-only or full disk may
    ask for it, so that the others run, not skip, where mounting is refused."""
    import ast

    tree = ast.parse(Path(__file__).read_text())
    mounting = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                and any(isinstance(call, ast.Call) and getattr(call.func, "id", None) == "_mount"
                        for call in ast.walk(node))}
    assert mounting == {"test_a_read_only_model_dir_gets_one_line",
                        "test_a_full_disk_keeps_the_last_checkpoint_and_a_rerun_resumes"}
