"""Query and document encoders that run without torch: ONNX Runtime, the tokenizers library, numpy."""

from serving.encoders.base import ENCODER_FILE, EncoderError, QueryEncoder, load_encoder, register_encoder_type

__all__ = ["ENCODER_FILE", "EncoderError", "QueryEncoder", "load_encoder", "register_encoder_type"]
