"""The command bodies behind train.py, eval.py, demo.py and the converter.

Each module has `main(argv=None) -> int` (the console commands
maskrcnn-train, maskrcnn-eval, maskrcnn-demo, maskrcnn-convert and
`python -m maskrcnn_jax <command>` call them); the library functions they
use live outside this package.
"""
