r"""Converts the networks a run shipped to TFLite, ONNX or a TensorFlow SavedModel, each checked.

    python -m experiments.convert --run_dir=runs/x --format=tflite,onnx [--output_dir=DIR]
    python -m experiments.convert --model=runs/x/net1.keras --format=onnx

writes `net1.tflite`, `net1.onnx` or `net1_saved_model/` for each network of a finished run (or for
the one `.keras` file given), into `--output_dir` (default: the folder the network is in). Each
file is run on a few inputs and compared with Keras before it takes its name
(`dcm_keras.export.convert_network`): a conversion that fails leaves nothing behind and says why.

A network trained on an image folder resizes images of any size inside, with TensorFlow's
`ScaleAndTranslate` op, which TFLite's built-in ops and ONNX lack. `--resize=auto` (the default)
converts it to TFLite and ONNX in its fixed-size form (`dcm_keras.shipping.fixed_size`: raw pixels
at the training size, normalised inside) and keeps the resize in a SavedModel; `keep` and `drop`
force one form. Feed the fixed-size form images resized as `dcm_keras.data` resizes image files
(bilinear, antialiased: `tf.image.resize(image, [size, size], antialias=True)`, then rounded).
"""

from __future__ import annotations

import os
import re
import sys
from typing import List

from absl import app, flags, logging

from experiments import common
from experiments.common import UserError
from experiments.rundir.files import RESULTS_FILE
from experiments.rundir.run import completed_results

FLAGS = flags.FLAGS
FORMATS = ("tflite", "onnx", "saved_model")  # dcm_keras.export.FORMATS, without importing TF
RESIZE = ("auto", "keep", "drop")
_NETWORK_FILE = re.compile(r"net\d+\.keras")


def _define_flags() -> None:
    flags.DEFINE_string("run_dir", None, "A finished run of experiments.train: converts every "
                        "network it shipped (net1.keras, ...).")
    flags.DEFINE_string("model", None, "One .keras network to convert instead of a whole run.")
    flags.DEFINE_list("format", None, f"Comma-separated formats: {', '.join(FORMATS)}.")
    flags.DEFINE_enum("resize", "auto", list(RESIZE),
                      "For networks that resize inside (image folders): 'drop' converts the "
                      "fixed-size form (images at the training size), 'keep' the resize too "
                      "(SavedModel only: TFLite and ONNX lack its op); 'auto' drops it for tflite "
                      "and onnx and keeps it for saved_model.")
    flags.DEFINE_string("output_dir", None, "Where the converted files go (default: the folder "
                        "of each network).")
    flags.DEFINE_bool("overwrite", False, "Replace converted files that already exist.")
    flags.mark_flag_as_required("format")


def output_name(network_file: str, format: str) -> str:
    """`net1.keras` -> `net1.tflite`, `net1.onnx` or `net1_saved_model`."""
    stem = os.path.basename(network_file)[:-len(".keras")]
    return {"tflite": f"{stem}.tflite", "onnx": f"{stem}.onnx",
            "saved_model": f"{stem}_saved_model"}[format]


def check_formats(formats: List[str]) -> List[str]:
    """The formats asked for, each checked, without repeats."""
    if not formats:
        raise UserError(f"--format is empty; valid: {', '.join(FORMATS)}.")
    for value in formats:
        if value not in FORMATS:
            raise UserError(f"--format has {value!r}; valid: {', '.join(FORMATS)}.")
    return list(dict.fromkeys(formats))


def network_files(run_path: str) -> List[str]:
    """The networks a finished run shipped, as its results.json lists them."""
    if not os.path.isdir(run_path):
        raise UserError(f"--run_dir={run_path} is not a folder.")
    results = completed_results(run_path)
    if results is None:
        raise UserError(f"--run_dir={run_path} holds no finished run (no complete "
                        f"{RESULTS_FILE}); convert one file with --model.")
    files = [entry.get("file") for entry in results.get("networks", {}).values()]
    if not files or not all(isinstance(f, str) and _NETWORK_FILE.fullmatch(f) for f in files):
        raise UserError(f"{os.path.join(run_path, RESULTS_FILE)} lists no networks as "
                        f"net1.keras, ... (got {files}).")
    return [os.path.join(run_path, f) for f in files]


def convert(paths: List[str], formats: List[str], resize: str = "auto",
            output_dir: str | None = None, overwrite: bool = False) -> List[dict]:
    """Converts each `.keras` network in `paths` to each format; one record per file written."""
    from dcm_keras import input_contract, load_network
    from dcm_keras.export import convert_network
    from dcm_keras.shipping import fixed_size

    if resize not in RESIZE:
        raise UserError(f"Unknown resize {resize!r}; valid: {', '.join(RESIZE)}.")
    if output_dir is not None and not os.path.isdir(output_dir):
        raise UserError(f"--output_dir={output_dir} is not a folder.")
    targets = {(path, format): os.path.join(output_dir or os.path.dirname(os.path.abspath(path)),
                                            output_name(path, format))
               for path in paths for format in formats}
    existing = [t for t in targets.values() if os.path.lexists(t)]
    if existing and not overwrite:  # checked before converting anything
        raise UserError(f"{existing[0]} already exists; --overwrite replaces it.")
    written = []
    for path in paths:
        model = load_network(path)
        contract = input_contract(model)
        for format in formats:
            drop = resize == "drop" or (resize == "auto" and format != "saved_model")
            form = fixed_size(model) if drop else model
            done = convert_network(form, targets[path, format], format, overwrite=overwrite)
            fixed = bool(contract and contract["resize"] and form is not model)
            written.append({"model": path, "format": format, "path": done.path,
                            "input_shape": list(form.input_shape), "fixed_size": fixed,
                            "difference": done.difference})
    return written


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines of every SavedModel write
    try:
        if (FLAGS.run_dir is None) == (FLAGS.model is None):
            raise UserError("give exactly one of --run_dir (a finished run) and --model (one "
                            ".keras file).")
        formats = check_formats(FLAGS.format)
        if FLAGS.model is not None and not FLAGS.model.endswith(".keras"):
            raise UserError(f"--model={FLAGS.model} is not a .keras file.")
        paths = network_files(FLAGS.run_dir) if FLAGS.run_dir else [FLAGS.model]
        try:
            written = convert(paths, formats, FLAGS.resize, FLAGS.output_dir, FLAGS.overwrite)
        except (UserError, OSError) as e:
            raise UserError(common.one_line(e)) from e
    except UserError as e:
        sys.exit(f"error: {common.one_line(e)}")
    for record in written:
        shape = record["input_shape"][1:]
        form = ("fixed-size form: images resized to " if record["fixed_size"] else "input: ") + (
            "images of any size" if None in shape else "x".join(map(str, shape)))
        print(f"{record['model']} -> {record['path']} ({form}; logits within "
              f"{record['difference']:.1g} of Keras's)", flush=True)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
