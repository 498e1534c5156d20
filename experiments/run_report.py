"""What a finished run of `experiments.train` leaves: the exported networks, test_error.png,
results.json and the closing line.

`write_report` runs on the chief once training is over. Each network is exported as
`deployable` makes it (`net1.keras`, ...: no auxiliary heads, raw pixels in, float32 out),
recorded in the run's manifest before it is written; results.json comes last and commits the run
(`TrainingRun.finish` then removes the backup, so a kill before it resumes with nothing left to
train and exports again).
"""

from __future__ import annotations

import os
import time
from typing import Dict, List

from experiments import common, plots
from experiments.run_setup import Run, build_network
from experiments.rundir import files
from experiments.rundir.run import network_file, without_nan


def deployable(run: Run, k: int):
    """Network k's deployable model (no auxiliary heads), always with plain BatchNormalization.

    It takes the dataset's raw pixel values and normalises them itself, and computes in float32
    whatever --precision trained it (`dcm_keras.export_network`, `dcm_keras.shipping`).

    A multi-replica run trains with synchronised BN layers; those are rebuilt as ordinary ones
    (same weights) so that the exported file does not depend on tf.distribute, which Keras's
    synchronised BN needs to be loaded under another backend.
    """
    info = run.data.info
    if not run.device.synchronized_bn:
        return run.dcm.export_network(k, preprocessing=info)
    from dcm_keras import export_network

    plain = build_network(run.config, run.config.nets[k], info, synchronized_bn=False)
    plain.set_weights(run.nets[k].get_weights())
    return export_network(plain, preprocessing=info)


def write_report(run: Run, history: List[dict], last: Dict[str, float],
                 process_start: float) -> None:
    """Exports the networks and writes test_error.png and results.json (the chief's part).

    `history`: the rows of history.csv; `last`: the final epoch's test metrics (`val_<head>_acc`,
    ...). Prints the test errors and where the results are.
    """
    from dcm_keras import data, save_network, shipping
    from experiments.rundir.checkpoints import debug_pause

    config, dcm, model_dir, out = run.config, run.dcm, run.model_dir, run.out
    epochs, initial_epoch = config.epochs, run.initial_epoch
    nets_summary = {}
    for k, (name, net, heads, ids) in enumerate(zip(config.nets, run.nets, dcm.heads,
                                                    dcm.head_ids)):
        deployable_net = deployable(run, k)
        out.record(network_file(k))  # recorded first: a kill may follow the write
        save_network(deployable_net, out.proc_path(network_file(k)), overwrite=True)
        if k == 0:
            debug_pause("export")
        entry = {
            "architecture": name,
            "file": network_file(k),
            "params": int(deployable_net.count_params()),
            "params_with_heads": int(net.count_params()),
            "test_error": {h: common.error_percent(last[f"val_{i}_acc"])
                           for h, i in zip(heads, ids)},
        }
        if f"val_{ids[-1]}_top5" in last:
            entry["top5_error"] = common.error_percent(last[f"val_{ids[-1]}_top5"])
        nets_summary[f"net{k + 1}"] = entry

    median_train = common.steady_epoch_seconds(history)
    missing = sorted(set(range(epochs)) - {row["epoch"] for row in history})
    if missing:  # history.csv was removed or cut before this process started (see HistoryFile)
        print(f"warning: {os.path.join(model_dir, files.HISTORY_FILE)} lacks {len(missing)} of "
              f"the {epochs} epochs (from epoch {missing[0] + 1}); results.json's history is "
              "incomplete and its wall_time_s is null.", flush=True)
    info = run.data.info
    results = {
        "complete": True,
        "flags": config.to_json(),
        "method": config.method,
        "connections": [[e.student, e.teacher, e.weight] for e in dcm.edges],
        "dataset": {"name": info.name, "num_classes": info.num_classes,
                    "image_shape": list(info.image_shape), "mean": list(info.mean),
                    "std": list(info.std), "train_examples": run.data.num_train,
                    "test_examples": run.data.num_test,
                    **({"classes": list(info.class_names)} if info.class_names else {}),
                    # Examples per class actually used (None where only a pass over the data
                    # could tell: tfds sources).
                    "train_class_counts": data.class_counts(
                        config.dataset, "train", data_dir=config.data_dir,
                        max_examples=config.max_train_examples, seed=config.seed),
                    "test_class_counts": data.class_counts(
                        config.dataset, "test", data_dir=config.data_dir,
                        max_examples=config.max_test_examples)},
        "backend": run.device.backend,
        "precision": run.device.precision,
        "replicas": run.device.strategy.num_replicas_in_sync,
        "workers": run.task.workers,
        "synchronized_bn": run.device.synchronized_bn,
        "networks": nets_summary,
        # What net1.keras, ... take: raw pixels, normalised inside (see dcm_keras.shipping).
        "export": {**shipping.describe(info), "precision": "float32"},
        "epochs": epochs,
        "steps_per_epoch": run.data.steps_per_epoch,
        "resumed_at_epoch": initial_epoch,
        # Summed over epochs, so a run resumed after a kill reports its whole training time.
        "wall_time_s": (None if missing else
                        sum(row.get("epoch_seconds", 0.0) for row in history)),
        "process_wall_time_s": time.perf_counter() - process_start,
        "epoch_train_seconds_median": median_train,
        "train_images_per_sec": (run.data.steps_per_epoch * config.batch_size / median_train
                                 if median_train else None),
        "versions": common.versions(),
        # Epochs without an evaluation have NaN test columns in history.csv; JSON gets null.
        "history": history,
    }
    out.record(files.PLOT_FILE)
    plots.plot_test_error(history, {f"net{k + 1}": (name, heads) for k, (name, heads)
                                    in enumerate(zip(config.nets, dcm.heads))},
                          out.proc_path(files.PLOT_FILE),
                          f"{config.method}: {' + '.join(config.nets)} on {info.name}")
    out.write_json(files.RESULTS_FILE, without_nan(results))
    run.run_dir.finish()
    summary = ", ".join(f"{k} ({v['architecture']}) {v['test_error']['logits']:.2f}%"
                        for k, v in nets_summary.items())
    print(f"Test error: {summary}. Results in {model_dir}.", flush=True)
