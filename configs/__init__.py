"""The model-zoo configs, one file per row (`get_config()` each).

Installed with the package as `maskrcnn_jax.configs` (pyproject.toml maps
this folder there), so `--config=r50_fpn_1x` finds them from anywhere;
`maskrcnn_jax.config.configs_dir()` locates them.
"""
