"""Reading and writing weights: torch-free checkpoint reader and layout converters."""
from minicnn.io.convert import (
    Converted, StateDictMismatch, conv_hwio_to_oihw, convert_state_dict, dense_to_linear,
    depthwise_hwcm_to_oihw, flatten_nhwc_to_nchw, load_pretrained, rename_key, unwrap_state_dict,
)
from minicnn.io.torch_load import UnsafePickleError, check_hash_prefix, load_torch, sha256sum
from minicnn.io.onnx_export import export_onnx
from minicnn.io.safetensors_io import load_safetensors, safetensors_metadata, save_safetensors
from minicnn.io.checkpoint import (
    CheckpointError, load_model, load_state, load_training_state, save_model, save_state, save_training_state,
)
