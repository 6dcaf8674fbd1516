"""Benchmark pipelines: ``run(ctx) -> {"metrics": {...}, "headline": [...], "details": {...}}``."""
