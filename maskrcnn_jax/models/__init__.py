"""Flax modules of Mask R-CNN; parameter paths mirror MMDetection's keys."""
