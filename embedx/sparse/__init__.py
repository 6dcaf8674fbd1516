"""Inference-free learned sparse retrieval: a learned document encoder, IDF queries (no model at query time)."""
