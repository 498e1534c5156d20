"""Bad input: a clear message, a non-zero exit (or a ValueError from the library), and nothing
written over earlier results. Complements test_cli_errors.py (flags, missing folders, a folder with
no class, a corrupt image, a run directory holding another run's flags).

Scripts: a TF_CONFIG that is not JSON, lacks this worker or is empty; an unknown `keras:NAME`
network and one that cannot take the images; an image folder with an empty
class; `--max_train_examples=0`; a finished run with other flags; truncated, foreign and unsafe
`.keras` files for evaluate.py. Library: labels outside [0, classes), one-hot labels, images of the
wrong shape or dtype, empty data, Fashion-MNIST IDX labels out of range.
"""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import one_line_error, run_all
from cli_helpers import tiny_train as _train

pytestmark = [
    pytest.mark.large,  # runs the scripts in subprocesses: `make test-fast` skips it
    pytest.mark.requires_tensorflow("experiment scripts are tested on TensorFlow"),
]


def _tiny_model_file(path: Path, lambda_layer: bool = False) -> Path:
    import keras

    layers = [keras.layers.Dense(2)]
    if lambda_layer:
        layers.append(keras.layers.Lambda(lambda x: x * 2.0))
    model = keras.Sequential([keras.Input((4,)), *layers])
    model.save(path)
    return path


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, small_folder):
    """{case: (exit status, message lines, folder)} for every failing command, run in parallel."""
    root = tmp_path_factory.mktemp("bad_input")

    empty_class = root / "empty_class"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (empty_class / split / c).mkdir(parents=True)
    for split in ("train", "test"):
        png = (Path(small_folder) / split / "class000" / "0.png").read_bytes()
        (empty_class / split / "a" / "0.png").write_bytes(png)
        if split == "test":
            (empty_class / split / "b" / "0.png").write_bytes(png)

    finished = root / "finished_run"  # a complete earlier run, made with other flags
    finished.mkdir()
    files = {"flags.json": json.dumps({"method": "dml", "epochs": 7}),
             "results.json": json.dumps({"complete": True, "flags": {"epochs": 7}}),
             "net1.keras": "earlier network", "history.csv": "epoch,loss\n0,1.0\n"}
    for name, text in files.items():
        (finished / name).write_text(text)

    valid = _tiny_model_file(root / "valid.keras")
    truncated = root / "truncated.keras"
    truncated.write_bytes(valid.read_bytes()[: valid.stat().st_size // 2])
    foreign = root / "foreign.keras"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    text = root / "text.keras"
    text.write_text("hello")
    unsafe = _tiny_model_file(root / "lambda.keras", lambda_layer=True)

    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    multi = ("--distribute=multi_worker",)
    cases = {
        "tf_config_json": (_train(small_folder, root / "m1", *multi),
                           {"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": '}),
        "tf_config_worker": (_train(small_folder, root / "m2", *multi),
                             {"TF_CONFIG": json.dumps({"cluster": cluster,
                                                       "task": {"type": "worker", "index": 2}})}),
        "tf_config_chief": (_train(small_folder, root / "m3", *multi),
                            {"TF_CONFIG": json.dumps({"cluster": cluster,
                                                      "task": {"type": "chief", "index": 0}})}),
        "tf_config_empty": (_train(small_folder, root / "m4", *multi), {"TF_CONFIG": ""}),
        "empty_class": (_train(empty_class, root / "m5"), {}),
        "zero_examples": (_train(small_folder, root / "m6", "--max_train_examples=0"), {}),
        "finished_other_flags": (_train(small_folder, finished), {}),
        "evaluate_truncated": (["evaluate", f"--model={truncated}", "--dataset=cifar10"], {}),
        "evaluate_foreign": (["evaluate", f"--model={foreign}", "--dataset=cifar10"], {}),
        "evaluate_text": (["evaluate", f"--model={text}", "--dataset=cifar10"], {}),
        "evaluate_lambda": (["evaluate", f"--model={unsafe}", "--dataset=cifar10"], {}),
        # An existing folder as --output: it evaluated everything, then failed to write.
        "evaluate_output_folder": (["evaluate", f"--model={valid}", "--dataset=cifar10",
                                    f"--output={root}"], {}),
        "evaluate_empty_model": (["evaluate", "--model=", "--dataset=cifar10"], {}),
        # `--work_dir=$UNSET`: the comparison's runs would land in the current folder.
        "compare_empty_work_dir": (["compare", "--work_dir=", "--no_train"], {}),
        "keras_unknown": (_train(small_folder, root / "m7", "--nets=keras:NoSuchNet,wrn_10_1"),
                          {}),
        # InceptionV3 needs at least 75x75 inputs; the folder's are 8x8 (padded to 32x32).
        "keras_too_small": (_train(small_folder, root / "m8", "--nets=keras:InceptionV3,wrn_10_1"),
                            {}),
    }
    return run_all(cases, root), files


def test_keras_applications_names_and_sizes_are_checked(outcomes):
    results, _ = outcomes
    message = one_line_error(results["keras_unknown"])
    assert "Unknown keras.applications model 'NoSuchNet'" in message
    assert "keras:MobileNetV3Small" in message  # the valid names are listed
    message = one_line_error(results["keras_too_small"])
    assert "keras:InceptionV3 cannot be built for" in message


def test_tf_config_that_is_not_json(outcomes):
    results, _ = outcomes
    message = one_line_error(results["tf_config_json"])
    assert "$TF_CONFIG is not valid JSON" in message
    assert not results["tf_config_json"][2].exists()  # nothing written


def test_tf_config_that_lacks_this_worker(outcomes):
    results, _ = outcomes
    message = one_line_error(results["tf_config_worker"])
    assert "lacks this worker" in message and "task worker 2" in message
    assert "(worker: 2 tasks;" in message
    message = one_line_error(results["tf_config_chief"])
    assert "lacks this worker" in message and "chief 0" in message
    message = one_line_error(results["tf_config_empty"])
    assert "needs $TF_CONFIG" in message
    for case in ("tf_config_worker", "tf_config_chief", "tf_config_empty"):
        assert not results[case][2].exists()


def test_image_folder_with_an_empty_class(outcomes):
    results, _ = outcomes
    message = one_line_error(results["empty_class"])
    assert "holds no images" in message and "empty_class/train/b" in message
    assert not results["empty_class"][2].exists()


def test_zero_training_examples(outcomes):
    results, _ = outcomes
    message = one_line_error(results["zero_examples"])
    assert "max_train_examples" in message


def test_finished_run_with_other_flags_is_left_untouched(outcomes):
    results, files = outcomes
    message = one_line_error(results["finished_other_flags"])
    assert "different flags" in message and "--overwrite" in message
    folder = results["finished_other_flags"][2]
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    for name, text in files.items():
        assert (folder / name).read_text() == text, name


@pytest.mark.parametrize("case,words", [
    ("evaluate_truncated", ("truncated.keras", "truncated or foreign")),
    ("evaluate_foreign", ("foreign.keras", "no config.json")),
    ("evaluate_text", ("text.keras", "not a zip archive")),
    ("evaluate_lambda", ("lambda.keras", "Lambda")),
])
def test_evaluate_refuses_bad_model_files(outcomes, case, words):
    results, _ = outcomes
    message = one_line_error(results[case])
    for word in words:
        assert word in message, message


# --- the library ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dcm():
    import keras

    from dcm_keras import DCM, networks

    nets = [networks.build("wrn_10_1", 3, (8, 8, 3), aux_heads=False) for _ in range(2)]
    model = DCM(nets, connections="final")
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


def _images(n=8, shape=(8, 8, 3), dtype="float32"):
    return np.random.default_rng(0).normal(size=(n, *shape)).astype(dtype)


@pytest.mark.parametrize("labels,match", [
    (np.array([0, 1, 2, 3, 0, 1, 2, 7]), r"must lie in \[0, 3\) for 3 classes; 2 of 8 do not "
                                         r"\(values 3, 7; the first is training labels\[3\] = 3\)"),
    (np.array([0, -1, 2, 1, 0, 1, 2, 1]), r"must lie in \[0, 3\).*values -1"),
    (np.eye(3)[np.arange(8) % 3], r"shape \(N,\) or \(N, 1\); got shape \(8, 3\) \(one-hot"),
    (np.array([0.0, 1.5, 2, 1, 0, 1, 2, 1]), r"integer class indices; training labels\[1\] is 1.5"),
])
def test_fit_refuses_bad_labels(dcm, labels, match):
    before = [w.copy() for w in dcm.get_weights()]
    with pytest.raises(ValueError, match=match):
        dcm.fit(_images(), labels, epochs=1, verbose=0)
    assert all((a == b).all() for a, b in zip(before, dcm.get_weights()))  # nothing trained


def test_evaluate_and_validation_labels_are_checked(dcm):
    labels = np.array([0, 1, 2, 5, 0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"evaluation labels must lie in \[0, 3\)"):
        dcm.evaluate(_images(), labels, verbose=0)
    with pytest.raises(ValueError, match=r"validation labels must lie in \[0, 3\)"):
        dcm.fit(_images(), labels % 3, validation_data=(_images(), labels), verbose=0)


@pytest.mark.parametrize("images,match", [
    (_images(shape=(16, 16, 3)), r"take images of shape \(None, 8, 8, 3\).*got a batch of shape "
                                 r"\(None, 16, 16, 3\)"),
    (_images(shape=(8, 8, 1)), r"take images of shape \(None, 8, 8, 3\)"),
    (_images(dtype="uint8"), r"floating-point images \(float32\).*got uint8"),
])
def test_fit_refuses_images_of_the_wrong_shape_or_dtype(dcm, images, match):
    with pytest.raises(ValueError, match=match):
        dcm.fit(images, np.zeros(len(images), "int32"), epochs=1, verbose=0)


def test_fit_refuses_empty_data(dcm):
    import tensorflow as tf

    with pytest.raises(ValueError, match=r"training data are empty \(0 examples\)"):
        dcm.fit(_images(0), np.zeros(0, "int32"), verbose=0)
    empty = tf.data.Dataset.from_tensor_slices((_images(0), np.zeros(0, "int32"))).batch(4)
    with pytest.raises(ValueError, match=r"training dataset is empty \(0 batches\)"):
        dcm.fit(empty, verbose=0)
    # Empty, but tf.data cannot tell before iterating.
    filtered = tf.data.Dataset.from_tensor_slices(
        (_images(), np.zeros(8, "int32"))).filter(lambda x, y: False).batch(4)
    with pytest.raises(ValueError, match="ran no training step"):
        dcm.fit(filtered, verbose=0)


def test_fashion_mnist_labels_out_of_range(tmp_path):
    from dcm_keras import data

    def idx(path, array, code):
        header = bytes([0, 0, code, array.ndim]) + b"".join(
            int(d).to_bytes(4, "big") for d in array.shape)
        path.write_bytes(header + array.tobytes())

    images = np.zeros((4, 28, 28), np.uint8)
    for prefix in ("train", "t10k"):
        idx(tmp_path / f"{prefix}-images-idx3-ubyte", images, 0x08)
        idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.array([0, 9, 12, 3], np.uint8), 0x08)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\); 1 do not \(the first: "
                                         r"label 12 of example 2\)"):
        data.load("fashion_mnist", "train", batch_size=2, data_dir=str(tmp_path))


def test_empty_paths_and_a_folder_as_output_are_refused_before_any_work(outcomes):
    results, _ = outcomes
    message = one_line_error(results["evaluate_output_folder"])
    assert "--output" in message and "is a folder; give a file path" in message
    assert "--model is empty" in one_line_error(results["evaluate_empty_model"])
    assert "--work_dir is empty" in one_line_error(results["compare_empty_work_dir"])


def test_a_dcm_checkpoint_outside_its_run_asks_for_dataset_before_loading(tmp_path,
                                                                          monkeypatch):
    # It used to say so only once TensorFlow had started and the model had loaded (95 s).
    import dcm_keras
    from dcm_keras import DCM, networks
    from experiments import evaluate

    nets = [networks.build("wrn_10_1", 3, (8, 8, 3), aux_heads=True) for _ in range(2)]
    path = tmp_path / "dcm.keras"
    DCM(nets).save(path)
    assert evaluate.peek_keras_file(str(path)) == {"contract": False, "image_shape": (8, 8, 3)}

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(dcm_keras, "load_network", never)
    with pytest.raises(evaluate.UserError, match="carries no input contract .*give --dataset"):
        evaluate.evaluate(str(path))
    # With a dataset, the size of an image folder comes from the file's own input.
    assert evaluate.check_before_loading(str(path), "image_folder:/x", None) == 8
    assert evaluate.check_before_loading(str(path), "image_folder:/x", 16) == 16
    assert evaluate.check_before_loading(str(path), "cifar10", None) is None
    assert evaluate.peek_keras_file(str(tmp_path / "missing.keras")) is None



def test_peeking_at_a_keras_file_reads_a_bounded_config(tmp_path, monkeypatch):
    # A crafted config.json that inflates past the limit is not read whole before TensorFlow.
    import zipfile

    from experiments import evaluate

    monkeypatch.setattr(evaluate, "PEEK_LIMIT", 1000)
    path = tmp_path / "big.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", '{"class_name": "Functional", "pad": "' + "x" * 5000 + '"}')
    assert evaluate.peek_keras_file(str(path)) is None
    monkeypatch.setattr(evaluate, "PEEK_LIMIT", 10_000)
    assert evaluate.peek_keras_file(str(path)) == {"contract": False, "image_shape": None}
