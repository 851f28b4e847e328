"""Benchmarks (`python -m avemo.bench train|audio|video`): speed figures, never test assertions."""
