"""Quick start: a light Mask R-CNN trained on synthetic shapes, on a CPU.

  python train.py --config=configs/quickstart.py --workdir=work_dirs/quickstart

Generates a synthetic COCO-format dataset of six kinds of coloured shapes on
first use (`maskrcnn_jax.data.synthetic`, under data.root), trains a
ResNet-50-FPN Mask R-CNN of quarter width (base_channels 16, 64-channel FPN)
from scratch at 320 x 240 pixels, evaluates bbox and segm AP on the
validation split and draws predictions into <workdir>/predictions. The whole
run takes about 15 minutes on 2 CPU cores.

Every stage is the zoo models' (same code, same MMDetection semantics); only
sizes are small: fewer samples, fewer proposals and narrower layers.
"""

from maskrcnn_jax.config import base_config


def get_config():
  c = base_config()
  c.name = 'quickstart'
  c.mmdet.config = ''
  m = c.model
  m.num_classes = 6
  m.backbone.base_channels = 16
  m.backbone.frozen_stages = -1          # from scratch: train everything
  m.backbone.norm_requires_grad = True
  m.neck.in_channels = (64, 128, 256, 512)
  m.neck.out_channels = 64
  m.rpn.feat_channels = 64
  m.roi.fc_channels = 256
  m.roi.mask_channels = 64
  m.roi.num_mask_convs = 2
  m.roi.roi_align_chunk = 64

  c.input.test_scale = (320, 240)
  c.input.canvases = ((256, 320), (320, 256))

  c.test.rpn_nms_pre = 500
  c.test.rpn_max_per_img = 300
  c.test.max_candidates = 1024

  t = c.train
  t.scales = ((320, 240),)
  t.max_instances = 16
  t.mask_crop = 56
  t.rpn_proposal_nms_pre = 1000
  t.rpn_proposal_max_per_img = 300
  t.rcnn_num_samples = 128
  t.global_batch_size = 4
  t.base_lr = 0.02
  t.scale_lr = False
  t.warmup_iters = 100
  t.epochs = 12
  t.milestones = (8, 11)
  t.init_backbone = ''
  t.init_backbone_from = 'none'         # from scratch, no ImageNet weights
  t.log_every = 20
  t.checkpoint_every = 200
  # On 2 cores, loader worker processes would compete with XLA's threads;
  # loading in-process costs a few ms per image.
  t.num_workers = 0

  d = c.data
  d.root = 'work_dirs/quickstart_data'
  d.train_ann = 'work_dirs/quickstart_data/annotations/instances_train.json'
  d.train_images = 'work_dirs/quickstart_data/train'
  d.val_ann = 'work_dirs/quickstart_data/annotations/instances_val.json'
  d.val_images = 'work_dirs/quickstart_data/val'
  d.synthetic = dict(num_train=400, num_val=50, image_size=320, seed=0)
  return c
