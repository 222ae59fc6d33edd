"""Data: COCO-format reading, training transforms and loaders, class names.

  coco        load_coco(ann_file, image_dir, train=...) -> CocoDataset
  transforms  MMDetection train pipeline -> fixed-shape examples
  pipeline    grain TrainLoader (shuffled, aspect-grouped, resumable, sharded)
  tfds_coco   TF-free TFDS builder (array_record) + TfdsSource
  synthetic   python -m maskrcnn_jax.data.synthetic --out DIR ...
"""
