"""`DCM`: several networks trained together with dense cross-layer mutual distillation.

    nets = [networks.build("wrn_16_2", 100), networks.build("wrn_16_2", 100)]
    dcm = DCM(nets)                       # connections="dense": the paper's 18 KL edges
    dcm.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=False))
    dcm.fit(train_ds, validation_data=test_ds, epochs=200)
    deployable = dcm.export_network(0)    # input -> final logits of net1, no aux heads

The loss lives in `compute_loss` and the metrics in `compute_metrics`, so Keras's own `train_step`
does the rest: gradient computation, mixed-precision loss scaling, tf.distribute reduction, XLA,
and the JAX backend.
The training `loss` is the whole objective; `val_loss` and `evaluate`'s `loss` are the deployable
networks' loss, the mean final-head cross-entropy, and `net1_loss`, ... each network's final-head
cross-entropy, in training and validation (see `compile` and `dcm_keras.monitoring`).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Optional, Sequence, Union

import keras
import numpy as np
from keras import ops

from dcm_keras import _keras_compat as compat
from dcm_keras import connections as connections_lib
from dcm_keras import losses as losses_lib
from dcm_keras import guards, monitoring, tracing, validation
from dcm_keras.errors import UserError
from dcm_keras.multi_worker import MultiWorkerFixes
from dcm_keras.summary import print_summary
from dcm_keras.deployable import export_network as _export_network
from dcm_keras.validation import network_heads

CE_NORMALIZATIONS = ("sum", "mean_per_network")
_BETWEEN_NETWORKS = ("dense", "same_stage", "cross_stage", "final")
KD_NORMALIZATIONS = ("sum", "mean_per_student")


@keras.saving.register_keras_serializable(package="dcm_keras")
class DCM(MultiWorkerFixes, keras.Model):
    """Trains one or more networks with deep supervision and mutual distillation between heads.

    Args:
        networks: functional `keras.Model`s returning dicts of logits with a `"logits"` entry,
            e.g. from `dcm_keras.networks.build`. A network with `trainable=False` acts as a
            fixed teacher (classic one-way KD).
        connections: distillation graph: a preset from `dcm_keras.connections.PRESETS`
            ("dense" = DCM, "final" = DML, "none" = independent / deep supervision, ...) or an
            explicit list of `(student, teacher[, weight])` edges over heads `net{k}_{head}`.
        temperature: softmax temperature of the KL terms (their gradient is rescaled by T^2).
        kd_weight: weight of the whole distillation part.
        kd_warmup_epochs: ramp the distillation weight linearly from 0 over this many epochs
            (0, the paper's setting, = no warm-up). `fit` adds the `KDWarmup` callback that
            drives it.
        ce_normalization: "sum" (paper) adds every head's cross-entropy; "mean_per_network"
            averages the cross-entropies within each network.
        kd_normalization: "sum" (paper) adds every edge; "mean_per_student" divides each
            edge's weight by the total weight of the edges into its student head.
        top5: also track top-5 accuracy of each final head (default: when classes >= 100).
    """

    def __init__(self, networks: Sequence[keras.Model], connections="dense",
                 temperature: float = 1.0, kd_weight: float = 1.0,
                 ce_normalization: str = "sum", kd_normalization: str = "sum",
                 top5: Optional[bool] = None, kd_warmup_epochs: int = 0, name: str = "dcm",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(networks, keras.Model):
            networks = [networks]
        networks = list(networks)
        if not networks:
            raise UserError("DCM needs at least one network.")
        heads = [network_heads(net, k) for k, net in enumerate(networks)]
        guards.check_distinct(networks)  # the same model twice would share its weights
        # Keyed by position as well as name: networks often share a name (two "wrn_16_2"s), and a
        # dict keyed by name alone would keep only the last one and let a mismatch through.
        labels = [f"net{k + 1} ({net.name})" for k, net in enumerate(networks)]
        classes = {label: int(net.output["logits"].shape[-1])
                   for label, net in zip(labels, networks)}
        if len(set(classes.values())) != 1:
            raise UserError(f"All networks must predict the same number of classes; got {classes}.")
        shapes = {label: tuple(net.input_shape[1:]) for label, net in zip(labels, networks)
                  if hasattr(net, "input_shape")}
        if len(set(shapes.values())) > 1:
            raise UserError(f"All networks must take the same input shape; got {shapes}.")
        if not (isinstance(temperature, (int, float)) and 0 < temperature < math.inf):
            raise UserError(f"temperature must be a finite positive number, got {temperature!r}.")
        if not (isinstance(kd_weight, (int, float)) and 0 <= kd_weight < math.inf):
            raise UserError(f"kd_weight must be a finite number >= 0, got {kd_weight!r}.")
        if not (isinstance(kd_warmup_epochs, int) and kd_warmup_epochs >= 0):
            raise UserError(f"kd_warmup_epochs must be an integer >= 0, got {kd_warmup_epochs!r}.")
        if ce_normalization not in CE_NORMALIZATIONS:
            raise UserError(f"Unknown ce_normalization {ce_normalization!r}. "
                            f"Valid: {', '.join(CE_NORMALIZATIONS)}.")
        if kd_normalization not in KD_NORMALIZATIONS:
            raise UserError(f"Unknown kd_normalization {kd_normalization!r}. "
                            f"Valid: {', '.join(KD_NORMALIZATIONS)}.")

        self.networks = networks
        self.temperature = float(temperature)
        self.kd_weight = float(kd_weight)
        self.kd_warmup_epochs = kd_warmup_epochs
        self.ce_normalization = ce_normalization
        self.kd_normalization = kd_normalization
        self.num_classes = next(iter(classes.values()))
        self._image_spec = validation.image_spec(networks)
        self.top5 = self.num_classes >= 100 if top5 is None else bool(top5)

        self.heads = heads
        self.head_ids = connections_lib.head_ids(heads)
        self.flat_heads = [h for net in self.head_ids for h in net]
        self.edges = connections_lib.resolve(connections, heads)
        # An explicit edge list may be a one-shot iterator: keep (and serialise) what it held.
        self.connections = connections if isinstance(connections, str) else list(self.edges)
        if isinstance(connections, str) and not self.edges and connections in _BETWEEN_NETWORKS:
            warnings.warn(f"DCM with one network and connections={connections!r} has no "
                          "distillation edge: that preset connects heads of different networks. "
                          "Use connections='none' (deep supervision) or 'dks' (between the "
                          "heads of one network), or give two or more networks.", stacklevel=2)
        self._students, self._teachers, weights = connections_lib.edge_arrays(
            self.edges, self.flat_heads)
        self._edge_weights = self._normalized_edge_weights(weights)
        self._head_weights = self._normalized_head_weights()

        final_heads = [net[-1] for net in self.head_ids]
        self._final_heads = np.array([self.flat_heads.index(h) for h in final_heads], np.int32)
        self._top5_heads = final_heads if self.top5 else []
        self.dcm_metrics = monitoring.dcm_metrics(self.flat_heads, self._top5_heads,
                                                  len(networks))
        # A variable rather than a Python float, so a callback can change it between epochs
        # without retracing the train function, on every backend.
        self.kd_scale = self.add_weight(shape=(), initializer="ones", trainable=False,
                                        name="kd_scale")
        # Every network is already built (functional), so the DCM has all its variables.
        self.built = True

    # The metric objects live in `dcm_metrics` only (one container, see DCMMetrics); these name them.
    @property
    def ce_tracker(self) -> keras.metrics.Mean:
        return self.dcm_metrics.metrics[0]

    @property
    def kd_tracker(self) -> keras.metrics.Mean:
        return self.dcm_metrics.metrics[1]

    @property
    def wd_tracker(self) -> keras.metrics.Mean:
        return self.dcm_metrics.metrics[2]

    # --- weights of the loss terms -------------------------------------------------------------
    def _normalized_edge_weights(self, weights: np.ndarray) -> np.ndarray:
        if self.kd_normalization == "sum" or not len(weights):
            return weights
        incoming = np.zeros(len(self.flat_heads), np.float32)
        np.add.at(incoming, self._students, weights)
        # A student whose incoming edges all have weight 0 keeps weight 0 (not 0 / 0 = nan).
        total = incoming[self._students]
        safe = np.where(total > 0, total, 1.0)
        return np.where(total > 0, weights / safe, 0.0).astype(np.float32)

    def _normalized_head_weights(self) -> Optional[np.ndarray]:
        if self.ce_normalization == "sum":
            return None
        return np.concatenate([np.full(len(h), 1.0 / len(h), np.float32) for h in self.heads])

    # --- Keras hooks ---------------------------------------------------------------------------
    def call(self, inputs, training=None):
        # Static shapes and dtype only: runs when a step is traced, not at every step.
        validation.check_images(inputs, self._image_spec)
        outputs = {}
        for net, ids, heads in zip(self.networks, self.head_ids, self.heads):
            y = net(inputs, training=training)
            outputs.update({hid: y[h] for hid, h in zip(ids, heads)})
        return outputs

    def fit(self, x=None, y=None, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, adding the `KDWarmup` callback when `kd_warmup_epochs > 0`.

        Also refuses data it can check cheaply (see `dcm_keras.validation`): in-memory labels
        outside `[0, num_classes)`, and training data that are empty. A `tf.data.Dataset` (which
        shuffles itself, as `data.load`'s do) is fitted with `shuffle=False` unless told otherwise.
        Raises `NonFiniteLossError` at the first NaN or infinite loss, naming epoch and batch; no
        epoch-end callback sees the diverged weights, which are left as they are (see `guards`).
        """
        self._check_data(x, y, "training")
        validation_data = kwargs.get("validation_data")
        if isinstance(validation_data, (tuple, list)) and len(validation_data) >= 2:
            self._check_data(validation_data[0], validation_data[1], "validation")
        if "shuffle" not in kwargs and validation.is_tf_dataset(x):
            kwargs["shuffle"] = False  # it shuffles itself; Keras warns that True is ignored
        callbacks = guards.with_guard(list(callbacks or []))  # after the caller's own
        callbacks += tracing.trace_notice(self)  # says why the first epoch starts late
        if self.kd_warmup_epochs and not any(isinstance(c, KDWarmup) for c in callbacks):
            callbacks.append(KDWarmup())
        tracing.build_optimizer(self)
        steps = validation.StepCounter()
        with validation.refusals(self):
            history = super().fit(x, y, *args, callbacks=callbacks + [steps], **kwargs)
        steps.check()
        return history

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`, refusing in-memory labels outside `[0, num_classes)`."""
        self._check_data(x, y, "evaluation")
        with validation.refusals(self):
            return super().evaluate(x, y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`, refusing images the networks cannot take before tracing."""
        validation.check_images(validation.images_spec(x), self._image_spec)
        with validation.refusals(self):
            return super().predict(x, *args, **kwargs)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        self._check_data(x, y, "training")
        tracing.build_optimizer(self)
        with validation.refusals(self):
            return super().train_on_batch(x, y, *args, **kwargs)

    def test_on_batch(self, x, y=None, *args, **kwargs):
        self._check_data(x, y, "evaluation")
        with validation.refusals(self):
            return super().test_on_batch(x, y, *args, **kwargs)

    def _check_data(self, x, y, what: str) -> None:
        validation.check_not_empty(x, what)
        validation.check_images(validation.images_spec(x), self._image_spec)
        validation.check_label_values(y, self.num_classes, f"{what} labels")

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        """Like `keras.Model.compile`, without `loss`: DCM computes its own loss.

        The training `loss` is the whole objective (ce_loss + kd_loss + wd_loss). The loss of
        `evaluate` and `fit`'s `val_loss` is the deployable networks' loss: the mean over networks
        of the final head's cross-entropy (no auxiliary heads, KL or weight decay), so default
        `ModelCheckpoint`/`EarlyStopping` select by the shipped networks (`dcm_keras.monitoring`).
        """
        if loss is not None:
            raise UserError("DCM computes its own loss; call compile() without `loss`. Use the "
                            "connections, temperature and kd_weight arguments of DCM instead.")
        super().compile(optimizer=optimizer, **kwargs)
        if kwargs.get("jit_compile", "auto") == "auto":
            # Keras saves "auto" as this backend's answer (False for TensorFlow on a CPU), so a
            # DCM saved under TensorFlow and loaded under JAX would train op by op, unjitted
            # (a WRN-10-1 pair's step took seconds). Saved as "auto", each backend decides.
            self._compile_config.config["jit_compile"] = "auto"

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def stacked_logits(self, y_pred):
        """`[H, B, C]` float32 logits of every head, in `flat_heads` order."""
        return ops.stack([ops.cast(y_pred[h], "float32") for h in self.flat_heads], axis=0)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        if y is None:
            raise validation.InputError("DCM needs labels: feed (images, labels) pairs.")
        validation.check_label_spec(y)  # static shape and dtype: trace time only
        logits = self.stacked_logits(y_pred)
        ce, kd = losses_lib.dcm_loss(
            logits, y, self._students, self._teachers, self._edge_weights,
            temperature=self.temperature, kd_weight=self.kd_weight * self.kd_scale,
            head_weights=self._head_weights, sample_weight=sample_weight)
        regularization = self.losses
        wd = (ops.sum(ops.stack([ops.cast(l, "float32") for l in regularization]))
              if regularization else ops.zeros((), "float32"))
        per_network = monitoring.network_losses(logits, y, self._final_heads, sample_weight)
        batch = ops.shape(ops.reshape(y, (-1,)))[0]
        self.dcm_metrics.update_losses(ce, kd, wd, per_network, batch)
        # Validation reports the deployable networks' loss (see `compile`). Keras sums gradients
        # over replicas, so each replica's share is 1/N (test_step unscales it for the tracker).
        loss = ce + kd + wd if training else ops.mean(per_network)
        return compat.scale_loss_for_distribution(loss + guards.nan_unless_finite(x, self.weights))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.dcm_metrics.update_accuracies(y, y_pred, self.flat_heads, self._top5_heads,
                                           sample_weight)
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # --- deployment ----------------------------------------------------------------------------
    def network_index(self, network: Union[int, str]) -> int:
        """0-based index of a network given as an int or as its DCM name (`"net1"`)."""
        names = [f"net{k + 1}" for k in range(len(self.networks))]
        if isinstance(network, str) and network in names:
            return names.index(network)
        if isinstance(network, int) and 0 <= network < len(self.networks):
            return network
        raise UserError(f"Unknown network {network!r}: give an index in "
                        f"[0, {len(self.networks)}) or one of {', '.join(names)}.")

    def export_network(self, network: Union[int, str] = 0, *, preprocessing=None,
                       precision: str = "float32", resize: Optional[bool] = None
                       ) -> keras.Model:
        """The deployable network: input -> final logits, no auxiliary heads.

        `preprocessing=data.get_info(...)` makes it take raw pixel values; it computes in float32
        unless `precision="training"` (see `dcm_keras.export_network`).
        """
        return _export_network(self.networks[self.network_index(network)],
                               preprocessing=preprocessing, precision=precision, resize=resize)

    def summary(self, print_fn=None, expand_nested: bool = False, **kwargs) -> None:
        """Each network as net1, net2, ... with its heads and parameters, then the KD edges.

        `expand_nested=True` also prints Keras's layer-by-layer summary (other arguments go to it).
        """
        print_summary(self, print_fn)
        if expand_nested:
            super().summary(print_fn=print_fn, expand_nested=True, **kwargs)

    # --- serialisation -------------------------------------------------------------------------
    def get_config(self):
        # Keras's own entries (name, trainable, dtype policy) first; `connections` is the preset
        # name or the resolved edge list (`self.connections` keeps what `resolve` validated).
        return {
            **super().get_config(),
            "networks": [keras.saving.serialize_keras_object(n) for n in self.networks],
            "connections": connections_lib.serialize(self.connections),
            "temperature": self.temperature,
            "kd_weight": self.kd_weight,
            "ce_normalization": self.ce_normalization,
            "kd_normalization": self.kd_normalization,
            "top5": self.top5,
            "kd_warmup_epochs": self.kd_warmup_epochs,
        }

    @classmethod
    def from_config(cls, config):
        # Deserialising a functional model consumes its config dict, so work on a deep copy and
        # leave the caller's config intact (it can then be used again, e.g. to clone).
        config = copy.deepcopy(config)
        config["networks"] = [keras.saving.deserialize_keras_object(n) for n in config["networks"]]
        return cls(**config)


class KDWarmup(keras.callbacks.Callback):
    """Sets `DCM.kd_scale` to `min(1, epoch / kd_warmup_epochs)` at the start of every epoch.

    The ramp depends only on the epoch index, so a run resumed by `BackupAndRestore` continues it.
    """

    def on_epoch_begin(self, epoch, logs=None):
        warmup = getattr(self.model, "kd_warmup_epochs", 0)
        scale = min(1.0, epoch / warmup) if warmup else 1.0
        self.model.kd_scale.assign(scale)
