"""dcm_keras: Dense Cross-layer Mutual-distillation (Yao & Sun, ECCV 2020) for Keras 3."""

# The light modules first, as names of this package too: a script may have loaded them already
# without this __init__ (experiments.common.light_library_module).
from dcm_keras import atomic, errors, precision
from dcm_keras import callbacks, connections, losses, networks
from dcm_keras.connections import PRESETS, Edge
from dcm_keras.callbacks import SaveBestNetwork
from dcm_keras.errors import UserError
from dcm_keras.export import export_saved_model, load_network, save_network
from dcm_keras.guards import NonFiniteLossError
from dcm_keras.shipping import input_contract
from dcm_keras.model import DCM, KDWarmup
from dcm_keras.deployable import export_network

__version__ = "0.1.0"

__all__ = ["DCM", "KDWarmup", "SaveBestNetwork", "Edge", "PRESETS", "callbacks", "connections",
           "losses", "networks", "export_network",
           "export_saved_model", "input_contract", "load_network", "save_network",
           "NonFiniteLossError", "UserError"]
