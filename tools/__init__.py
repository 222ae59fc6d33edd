"""Command-line tools (run from the repository root as `python -m tools.<name>`;
the library side of each lives in `maskrcnn_jax`)."""
