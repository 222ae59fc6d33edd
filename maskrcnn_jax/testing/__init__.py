"""Helpers shared by tests, benchmarks and notebooks."""
