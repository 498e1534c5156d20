"""MirroredStrategy parity: two replicas on one global batch train exactly like one device.

The distributed run needs the CPU split into two logical devices before TensorFlow initialises,
so it runs in a fresh subprocess (this file, run as a script), which prints its measurements as
JSON; the tests below only compare numbers.

Cases: (a) two networks without batch statistics (Conv/Dense with dict outputs, one
L2-regularised layer), in float32, and (b) a WRN with `synchronized_bn=True` (and its default
weight decay) distilling with such a network, in float64. Each case builds the DCM once, copies its
initial weights into a DCM built under the strategy, trains both for 2 steps (SGD with momentum,
shuffle=False) on the same 16-example global batch, then compares all weights (incl. BN moving
statistics) and the per-step metrics from `fit`; the plain case also compares the metrics from
`evaluate` (the sync-BN case skips it to keep the test fast).

Why the sync-BN case runs in float64, and why its bound is what it is. Two replicas compute the
same sums as one device in another order (per-replica partial sums, then an all-reduce). In float32
that reordering moves every activation by about 1e-7 relative, which is harmless except at a ReLU
whose input lies within that distance of 0: there the unit switches on in one run and off in the
other, its gradient changes by the whole upstream gradient, and after one SGD step the weights
differ by ~lr * |grad| ~ 1e-4. That is what failed on an Intel (AMX) machine: after step 1, one
input of `aux2_relu` was 1.6e-7 from 0, and a single-device run fed the *same batch in another
order* differed from the unpermuted one by exactly as much as the two-replica run (1.27e-4 in
`aux2_stage3_block1_conv2/kernel`), while the unpermuted float32 run matched a float64 run to
2e-7. A WRN has ~140k ReLU inputs per step, so such a near-tie is likely on some machine for some
seed: a float32 comparison of it is a lottery, not a tolerance question. In float64 the same
reordering moves activations by ~1e-16, and a ReLU input that close to 0 has a probability of
~1e-10 per run. The loss is still computed in float32 (DCM casts logits to float32), so a logit
can round to a neighbouring float32 in one run (~6e-8 relative): through one SGD step (lr 0.1,
gradients of order 1) that bounds the legitimate weight difference near 1e-8, which is
`WEIGHT_TOL_FLOAT64`. Measured: 6.7e-16 on an Intel Xeon (AMX). A real difference in what sync
BN computes (per-replica instead of global statistics) moves the weights by ~1e-2.

The plain case stays in float32 (what users train in): it has ~4k ReLU inputs per step, so the
chance that one lies within float32 reordering distance of 0 is ~1e-3, and its weights agree to
~1e-7 on Intel and AMD machines.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.large  # runs subprocesses: `make test-fast` skips it

WEIGHT_TOL = {"plain": 1e-5, "sync_bn": 1e-8}  # float32 / float64: see the module docstring
METRIC_TOL = 1e-4
CASES = ("plain", "sync_bn")
DTYPES = {"plain": "float32", "sync_bn": "float64"}
MARK = "DISTRIBUTE_RESULT "


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], capture_output=True,
                          text=True, timeout=400, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [l for l in proc.stdout.splitlines() if l.startswith(MARK)]
    assert proc.returncode == 0 and lines, (
        f"worker failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(lines[-1][len(MARK):])


def test_two_replicas_were_used(results):
    assert results["replicas"] == 2


@pytest.mark.parametrize("case", CASES)
def test_weights_match_single_device(results, case):
    r = results[case]
    assert r["num_weights"] > 0
    assert r["moved"] > 1e-3  # training changed the weights, so the comparison means something
    assert r["dtype"] == ("float64" if case == "sync_bn" else "float32")
    assert r["max_weight_diff"] < WEIGHT_TOL[case], r["worst_weight"]


@pytest.mark.parametrize("case", CASES)
def test_metrics_match_single_device(results, case):
    r = results[case]
    phases = ("fit", "evaluate") if r["evaluate_single"] is not None else ("fit",)
    for phase in phases:
        single, dist = r[f"{phase}_single"], r[f"{phase}_mirrored"]
        for name in ("loss", "ce_loss", "kd_loss", "wd_loss", "net1_logits_acc"):
            assert name in single
        assert set(single) == set(dist)
        for name in single:
            assert dist[name] == pytest.approx(single[name], abs=METRIC_TOL, rel=METRIC_TOL), \
                (phase, name, single[name], dist[name])
    assert r["fit_single"]["kd_loss"][0] > 1e-3
    assert r["fit_single"]["wd_loss"][0] > 0  # regularisation is part of the comparison


def test_evaluated_in_the_plain_case(results):
    assert results["plain"]["evaluate_mirrored"] is not None


def test_metrics_match_numpy_recomputation(results):
    """The single-device `evaluate` numbers are right, so matching them is meaningful."""
    r = results["plain"]
    for name, value in r["numpy_evaluate"].items():
        assert r["evaluate_single"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


# --- the worker (runs in its own process) -------------------------------------------------

def _worker():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np

    from dcm_keras import DCM, networks

    classes, image, batch, steps = 4, (8, 8, 3), 16, 2

    def plain_net(name):
        inputs = keras.Input(image)
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=f"{name}_conv",
                                kernel_regularizer=keras.regularizers.L2(1e-3))(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        aux = keras.layers.Dense(classes, name=f"{name}_aux1")(x)
        h = keras.layers.Dense(8, activation="relu", name=f"{name}_hidden")(x)
        logits = keras.layers.Dense(classes, name=f"{name}_logits")(h)
        return keras.Model(inputs, {"aux1": aux, "logits": logits}, name=name)

    def build(case):
        keras.config.set_dtype_policy(DTYPES[case])
        if case == "plain":
            nets = [plain_net("a"), plain_net("b")]
        else:  # one WRN (all its heads) is enough to exercise synchronised BN; it is the slow part
            nets = [networks.build("wrn_10_1", classes, input_shape=image, synchronized_bn=True),
                    plain_net("b")]
        model = DCM(nets, connections="dense")
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        keras.config.set_dtype_policy("float32")
        return model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch,) + image).astype("float32")
    y = rng.integers(0, classes, batch).astype("int32")
    x[np.arange(batch), 0, 0, y % 3] += 3.0  # a little signal, so accuracies are not all 0

    def dataset(case):
        images = x.astype(DTYPES[case])
        return tf.data.Dataset.from_tensor_slices((images, y)).batch(batch)  # one global batch

    def run(model, case, evaluate):
        history = model.fit(dataset(case), epochs=steps, shuffle=False, verbose=0).history
        if not evaluate:
            return {k: [float(v) for v in vs] for k, vs in history.items()}, None
        evaluated = model.evaluate(dataset(case), verbose=0, return_dict=True)
        return ({k: [float(v) for v in vs] for k, vs in history.items()},
                {k: float(v) for k, v in evaluated.items()})

    def numpy_evaluate(model):
        """ce/kd/wd/loss/accuracy recomputed in NumPy from the trained model's predictions."""
        pred = {k: np.asarray(v, np.float64) for k, v in model(x, training=False).items()}

        def log_softmax(z):
            z = z - z.max(-1, keepdims=True)
            return z - np.log(np.exp(z).sum(-1, keepdims=True))

        heads = list(pred)
        ce = sum(np.mean(-log_softmax(pred[h])[np.arange(batch), y]) for h in heads)
        kd = sum(np.mean(np.sum(np.exp(log_softmax(pred[t]))
                                * (log_softmax(pred[t]) - log_softmax(pred[s])), -1))
                 for s in heads for t in heads if s.split("_")[0] != t.split("_")[0])
        wd = sum(float(l) for l in model.losses)
        # evaluate's loss is the deployable networks' loss: the mean final-head cross-entropy.
        loss = np.mean([np.mean(-log_softmax(pred[h])[np.arange(batch), y])
                        for h in heads if h.endswith("_logits")])
        return {"ce_loss": ce, "kd_loss": kd, "wd_loss": wd, "loss": loss,
                "net1_logits_acc": float(np.mean(pred["net1_logits"].argmax(-1) == y))}

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}
    for case in CASES:
        evaluate = case == "plain"  # the reduction path is the same; keep the slow case lean
        keras.utils.set_random_seed(0)
        single = build(case)
        initial = single.get_weights()
        with strategy.scope():
            mirrored = build(case)
        mirrored.set_weights(initial)
        fit_single, eval_single = run(single, case, evaluate)
        fit_mirrored, eval_mirrored = run(mirrored, case, evaluate)
        diffs = [float(np.max(np.abs(a - b))) if a.size else 0.0
                 for a, b in zip(single.get_weights(), mirrored.get_weights())]
        names = [w.path for w in single.weights]
        moved = max(float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), initial))
        worst = int(np.argmax(diffs))
        out[case] = {
            "dtype": keras.backend.standardize_dtype(single.networks[0].weights[0].dtype),
            "num_weights": len(diffs), "max_weight_diff": max(diffs),
            "worst_weight": f"{names[worst]}: {diffs[worst]:.3g}", "moved": moved,
            "fit_single": fit_single, "fit_mirrored": fit_mirrored,
            "evaluate_single": eval_single, "evaluate_mirrored": eval_mirrored,
            "numpy_evaluate": numpy_evaluate(single) if evaluate else None,
        }
    print(MARK + json.dumps(out), flush=True)


if __name__ == "__main__":
    _worker()
