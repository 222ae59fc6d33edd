"""Data: COCO-format reading, class names."""
