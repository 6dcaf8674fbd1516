"""Benchmark suite: YAML specs -> runs -> JSON results -> the README table."""
