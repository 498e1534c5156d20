"""Does one network fit a small Fashion-MNIST training set under a recipe? (baseline, no heads)

Trains a single registered network (no auxiliary heads) with the comparison recipe's schedule
(SGD momentum 0.9, learning rate x0.2 at 1/2 and 3/4 of the epochs, batch 32, coupled weight
decay 5e-4) on the first N training images with the library's augmenting pipeline, then prints
the last epoch's training accuracy (augmented batches, dropout on) and the accuracy on the same
images evaluated plainly. Used to pick the budget of a comparison by training-set fit alone,
before any DCM run (docs/results/configs/fmnist_n128_e200_mnv3small.json):

    .venv/bin/python docs/fit_probe.py keras:MobileNetV3Small 128 200 0.02
    .venv/bin/python docs/fit_probe.py keras:MobileNetV3Small 128 120 0.1 '{"dropout_rate": 0.0}'
"""
import json
import sys
import time

import keras

from dcm_keras import data, networks


def main(name: str, examples: int, epochs: int, lr: float, extra: str = "{}") -> None:
    kwargs = json.loads(extra)
    keras.utils.set_random_seed(0)
    net = networks.build(name, 10, input_shape=(28, 28, 1), aux_heads=False, weight_decay=5e-4,
                         **kwargs)
    batch = 32
    steps = examples // batch
    train = data.load("fashion_mnist", "train", batch_size=batch, max_examples=examples, seed=0,
                      repeat=True)
    plain = data.load("fashion_mnist", "train", batch_size=128, training=False,
                      max_examples=examples)
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [steps * epochs // 2, steps * epochs * 3 // 4], [lr, lr * 0.2, lr * 0.04])
    model = keras.Model(net.input, net.output["logits"])
    model.compile(keras.optimizers.SGD(schedule, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.time()
    history = model.fit(train, epochs=epochs, steps_per_epoch=steps, verbose=0)
    plain_acc = model.evaluate(plain, verbose=0, return_dict=True)["accuracy"]
    print(f"{name} {kwargs} {examples} images x {epochs} epochs, lr {lr}: training accuracy "
          f"{100 * history.history['accuracy'][-1]:.1f} % (augmented), "
          f"{100 * plain_acc:.1f} % (plain); {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) not in (5, 6):
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), *sys.argv[5:])
