"""ONNX export of torch encoders (``embedx export``), with parity checks and int8 quantisation,
and the throughput measurement that compares torch and ONNX encoders."""

from embedx.export.onnx import EXPORTERS, ExportError, default_sample_texts, export_dense, export_sparse_doc
from embedx.export.parity import DEFAULT_THRESHOLDS, ParityError

__all__ = ["DEFAULT_THRESHOLDS", "EXPORTERS", "ExportError", "ParityError", "default_sample_texts",
           "export_dense", "export_sparse_doc"]
