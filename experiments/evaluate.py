r"""Top-1 / top-5 error of an exported network (a `.keras` file written by `experiments.train`).

    python -m experiments.evaluate --model=runs/dcm/net1.keras [--dataset=cifar100] \
        [--split=test] [--output=net1_eval.json]

Without `--dataset`, the dataset (and its `--data_dir` and `--image_size`, unless given) is the one
the run beside the file was trained on, as its flags.json (or results.json) records it; without a
run record, the registered dataset whose input contract (normalisation, image shape, classes) the
network carries.

The model is loaded with `safe_mode=True`. It is a deployable network mapping images to logits, or
a whole `DCM` (e.g. what `keras.callbacks.ModelCheckpoint` saved), whose networks are each
evaluated on their final head.
Both forms work: a network that takes raw pixel values and normalises them itself (what
`experiments.train` exports; `dcm_keras.input_contract` describes it), which is fed the dataset's
raw pixels, and a bare network, which is fed normalised images.
"""

from __future__ import annotations

import os
import sys
import time
import zipfile
from typing import Dict, List, Optional, Tuple

from absl import app, flags

from experiments import common
from experiments.common import UserError
from experiments.rundir import files

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Only when run as a script: tests import this module's functions into processes that
    define flags of the same names (benchmarks.throughput's --image_size)."""
    flags.DEFINE_string("model", None, "Path of a .keras network (e.g. runs/x/net1.keras).")
    flags.DEFINE_string("dataset", None,
                        "cifar10, cifar100, fashion_mnist, imagenet2012 or image_folder:PATH. Default: "
                        "the dataset of the run the model is in (its flags.json or results.json), "
                        "else the one matching the network's input contract. Needed for a file "
                        "with neither (a whole DCM checkpoint outside its run folder): that is "
                        "checked before the model loads.")
    flags.DEFINE_enum("split", "test", ["test", "train"], "Split to evaluate on.")
    flags.DEFINE_string("data_dir", None, "Dataset location (tfds data_dir or an IDX folder).")
    flags.DEFINE_integer("image_size", None, "Input size for imagenet2012 and image folders "
                         "(default: the run's, else the size the file's input takes).",
                         lower_bound=1)
    flags.DEFINE_integer("batch_size", 256, "Evaluation batch size.", lower_bound=1)
    flags.DEFINE_integer("max_examples", None, "Evaluate on N examples only (the first N of a "
                         "built-in dataset; a seeded stratified subset of an image folder). "
                         "Default: the whole split, not the subset a run's --max_test_examples "
                         "scored, so the error can differ from the run's results.json.",
                         lower_bound=1)
    flags.DEFINE_string("output", None, "Also write the result as JSON to this file (checked "
                        "before evaluating: not a folder).")
    flags.mark_flag_as_required("model")


def run_dataset(model_path: str) -> Optional[Tuple[str, Optional[str], Optional[int], str]]:
    """`(dataset, data_dir, image_size, record)` of the run `model_path` lies in, from its
    flags.json or results.json (`record`), or None when neither names a dataset."""
    directory = os.path.dirname(os.path.abspath(model_path))
    for name in (files.FLAGS_FILE, files.RESULTS_FILE):
        record = files.read_json(os.path.join(directory, name)) or {}
        run_flags = record.get("flags", record) if name == files.RESULTS_FILE else record
        if isinstance(run_flags, dict) and isinstance(run_flags.get("dataset"), str):
            return (run_flags["dataset"], run_flags.get("data_dir"), run_flags.get("image_size"),
                    os.path.join(directory, name))
    return None


def contract_dataset(contract: Optional[dict], classes: int, model_path: str) -> str:
    """The one registered fixed dataset whose normalisation, image shape and class count match a
    network's input contract; UserError when none or several do."""
    from dcm_keras import data

    found = []
    for name, spec in data.REGISTRY.items():
        if contract is None or spec.resizable or contract["class_names"]:
            continue
        if (list(spec.image_shape) == list(contract["image_shape"])
                and spec.num_classes == classes
                and all(abs(a - b) < 1e-5 for a, b in zip(spec.mean + spec.std,
                                                          contract["mean"] + contract["std"]))):
            found.append(name)
    if len(found) != 1:
        why = ("carries no input contract" if contract is None
               else "fits several datasets" if found else "fits no built-in dataset")
        raise UserError(f"{model_path} {why} and no flags.json or results.json beside it names "
                        "its run's dataset: give --dataset.")
    return found[0]


PEEK_LIMIT = 64 * 2**20  # bytes of config.json read before TensorFlow; real ones are far smaller


def peek_keras_file(model_path: str) -> Optional[Dict[str, object]]:
    """What a `.keras` file's config.json says without loading the model (which takes TensorFlow
    and, for a large network, minutes): `{"contract": whether it carries an input contract,
    "image_shape": the first input layer's (H, W, C) or None}`; None when it cannot be read
    (loading then reports why)."""
    try:
        with zipfile.ZipFile(model_path) as archive, archive.open("config.json") as member:
            # Read incrementally and at most PEEK_LIMIT: a crafted member can expand without
            # bound (load_network's archive checks come later, with TensorFlow).
            text = member.read(PEEK_LIMIT + 1)
        if len(text) > PEEK_LIMIT:
            return None
        config = files.parse_json(text)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if not isinstance(config, dict):
        return None
    layers = (config.get("config") or {}).get("layers") or []
    names = {(layer.get("config") or {}).get("name") for layer in layers
             if isinstance(layer, dict) and isinstance(layer.get("config"), dict)}
    stack, shape = [config], None
    # The first input layer or network of the library's (`input_shape` in its config), however
    # deeply a DCM nests it.
    while stack and shape is None:
        item = stack.pop(0)
        if isinstance(item, dict):
            config = item.get("config") if isinstance(item.get("config"), dict) else {}
            if item.get("class_name") == "InputLayer" and isinstance(config.get("batch_shape"),
                                                                     list):
                shape = tuple(config["batch_shape"][1:])
            elif isinstance(config.get("input_shape"), list) and len(config["input_shape"]) == 3:
                shape = tuple(config["input_shape"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return {"contract": {"normalize", "rescale"} <= names, "image_shape": shape}


def check_before_loading(model_path: str, dataset: Optional[str], image_size: Optional[int]
                         ) -> Optional[int]:
    """Refuses, before the model is loaded, a file whose dataset cannot be known: no --dataset,
    no run record beside it and no input contract (a DCM checkpoint, a bare network). Returns the
    image size to evaluate a resizable dataset at when none is given and the file has no contract
    (which would otherwise say it): the size of the file's input layer."""
    peek = peek_keras_file(model_path)
    if peek is None or peek["contract"]:
        return image_size
    if dataset is None:
        raise UserError(f"{model_path} carries no input contract (a whole DCM or a bare network) "
                        "and no flags.json or results.json beside it names its run's dataset: "
                        "give --dataset (and --image_size for imagenet2012 or an image folder).")
    shape = peek["image_shape"]
    resizable = dataset.startswith("image_folder") or dataset == "imagenet2012"
    if image_size is None and resizable and shape and len(shape) == 3 and shape[0] == shape[1] \
            and isinstance(shape[0], int):
        return shape[0]
    return image_size


def evaluate(model_path: str, dataset: Optional[str] = None, split: str = "test",
             data_dir: Optional[str] = None, image_size: Optional[int] = None,
             batch_size: int = 256, max_examples: Optional[int] = None) -> Dict[str, object]:
    """Top-1 and top-5 error (%) of the network in `model_path` on a dataset split.

    `dataset=None` takes the run's dataset (`run_dataset`), else the one the network's input
    contract matches (`contract_dataset`). Top-5 error is None when there are 5 classes or fewer
    (it would be 0 by construction). Raises UserError (a ValueError) when the network does not
    fit the dataset. The whole split is scored (or its first `max_examples`), not the subset a
    run's --max_test_examples evaluated on.
    """
    common.check_path_flag(model_path, "--model")
    dataset_from, run = "--dataset", run_dataset(model_path) if dataset is None else None
    if run is not None:
        dataset, run_data_dir, run_image_size, dataset_from = run
        data_dir = data_dir if data_dir is not None else run_data_dir
        image_size = image_size if image_size is not None else run_image_size
    common.check_data_dir(data_dir)
    # Before TensorFlow starts and the model loads: a DCM checkpoint outside its run folder
    # used to be refused only after both.
    image_size = check_before_loading(model_path, dataset, image_size)

    import tensorflow as tf

    from dcm_keras import DCM, data, input_contract, load_network

    model = load_network(model_path)
    contract = input_contract(model)
    if dataset is None:
        classes = (model.num_classes if isinstance(model, DCM)
                   else int(getattr(model.output, "shape", (0,))[-1] or 0))
        dataset = contract_dataset(contract, classes, model_path)
        dataset_from = "the network's input contract"
    if image_size is None and contract is not None and dataset.startswith("image_folder"):
        image_size = contract["image_shape"][0]  # the size the network was trained at
    info = data.get_info(dataset, data_dir=data_dir, image_size=image_size)
    if contract is not None and contract["class_names"] and info.class_names and (
            list(contract["class_names"]) != list(info.class_names)):
        # Labels follow the sorted folder names: other names would silently score other classes.
        raise UserError(f"{model_path} was trained on the classes "
                        f"{', '.join(contract['class_names'])}; {dataset} has "
                        f"{', '.join(info.class_names)}.")
    # A whole DCM (what keras.callbacks.ModelCheckpoint saves): evaluate each of its networks.
    if isinstance(model, DCM):
        named = {f"net{k + 1}": model.export_network(k) for k in range(len(model.networks))}
    elif isinstance(model.output, (dict, list, tuple)):
        raise UserError(f"{model_path} has several outputs; evaluate a deployable network "
                        "(net1.keras, as exported by experiments.train) or a whole DCM.")
    else:
        named = {"network": model}
    contracts = {name: input_contract(net) for name, net in named.items()}
    for name, net in named.items():
        input_shape, classes = tuple(net.input_shape[1:]), int(net.output.shape[-1])
        if contracts[name] is not None:  # raw pixels in; what it normalises is the network's shape
            input_shape = tuple(contracts[name]["image_shape"])
        if input_shape != tuple(info.image_shape):
            resizable = data.REGISTRY[dataset.split(":")[0]].resizable
            hint = (f"--image_size={input_shape[0]} makes it give that" if resizable and
                    input_shape[0] == input_shape[1] and input_shape[2] == info.image_shape[2]
                    else "give --dataset the dataset it was trained on")
            raise UserError(f"{model_path} takes images of shape {input_shape}, {dataset} (from "
                            f"{dataset_from}) gives {tuple(info.image_shape)}: {hint}.")
        if classes != info.num_classes:
            raise UserError(f"{model_path} predicts {classes} classes, {dataset} (from "
                            f"{dataset_from}) has {info.num_classes}: give --dataset the dataset "
                            "it was trained on.")
    ds = data.load(dataset, split, batch_size=batch_size, training=False, data_dir=data_dir,
                   max_examples=max_examples, image_size=image_size)
    classes = info.num_classes
    k = min(5, classes)

    mean, std = tf.constant(info.mean, tf.float32), tf.constant(info.std, tf.float32)

    @tf.function
    def counts(images, labels):
        labels = tf.cast(labels, tf.int32)
        # The pipeline's images are normalised integers: undoing it and rounding gives back
        # the exact raw pixel values, for networks that take them.
        pixels = tf.clip_by_value(tf.round((images * std + mean) * 255.0), 0.0, 255.0)
        out = {}
        for name, net in named.items():
            inputs = images if contracts[name] is None else pixels
            logits = tf.cast(net(inputs, training=False), tf.float32)
            out[name] = (tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.int64)),
                         tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.int64)))
        return out

    start = time.perf_counter()
    total = 0
    correct = {name: [0, 0] for name in named}
    for images, labels in ds:
        for name, (top1, topk) in counts(images, labels).items():
            correct[name][0] += int(top1)
            correct[name][1] += int(topk)
        total += int(labels.shape[0])
    if total == 0:
        raise UserError(f"{dataset} {split} split has no examples.")
    scores = {name: {
        "input": "normalized" if contracts[name] is None else "pixels",
        "top1_error": 100.0 * (1 - correct[name][0] / total),
        "top5_error": 100.0 * (1 - correct[name][1] / total) if classes > 5 else None,
        "params": int(net.count_params())} for name, net in named.items()}
    result = {"model": os.path.abspath(model_path), "dataset": dataset,
              "dataset_from": dataset_from, "split": split, "examples": total}
    if isinstance(model, DCM):
        result["networks"] = scores
    else:
        result.update(scores["network"])
    result.update({"seconds": time.perf_counter() - start, "versions": common.versions()})
    return result


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:  # cheap checks first: TensorFlow and the model take a while to load
        common.check_path_flag(FLAGS.model, "--model")
        common.check_output_file(FLAGS.output, "--output")
    except UserError as e:
        sys.exit(f"error: {common.one_line(e)}")
    try:
        result = evaluate(FLAGS.model, FLAGS.dataset, FLAGS.split, FLAGS.data_dir,
                          FLAGS.image_size, FLAGS.batch_size, FLAGS.max_examples)
    # dcm_keras reports an unreadable or unsafe file with its UserError, and a dataset it cannot
    # prepare (or missing TensorFlow) with RuntimeError; anything else is a bug: a traceback.
    except (UserError, OSError, RuntimeError) as e:
        sys.exit(f"error: {common.one_line(e)}")
    for name, score in result.get("networks", {"": result}).items():
        top5 = ("" if score["top5_error"] is None
                else f", top-5 error {score['top5_error']:.2f}%")
        print(f"{FLAGS.model}{' ' + name if name else ''} on {result['dataset']} {FLAGS.split} "
              f"({result['examples']} images): top-1 error {score['top1_error']:.2f}%{top5}",
              flush=True)
    if FLAGS.output:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        files.write_json(FLAGS.output, result)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
