"""Pure jax/numpy ops. Boxes are XYXY in absolute pixels, float32."""
