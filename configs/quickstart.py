"""Quick start: a light Mask R-CNN trained on synthetic shapes, on a CPU.

  python train.py --config=configs/quickstart.py   # -> work_dirs/quickstart

Generates a synthetic COCO-format dataset of coloured shapes on first use
(`maskrcnn_jax.data.synthetic`, under data.root; landscape 256 x 192
images, so one canvas and one compiled program), trains a ResNet-50-FPN
Mask R-CNN of quarter width (base_channels 16, 64-channel FPN) from
scratch, evaluates bbox and segm AP on the validation split and draws
predictions into <workdir>/predictions. README.md ("Set-up") has the
measured time and AP of this exact command.

The dataset is an easier variant of the generator's default set, chosen
so that a from-scratch model gets a useful AP within minutes on a CPU:
four shape classes (circle, square, triangle, star; the default also has
ellipse and hexagon, the shapes closest to the circle), larger shapes
(radius 10-25% of the short side; default 6-22%) and fewer per image
(2-6; default 2-8); 400 train / 50 val images. On the default six-class
set the same model and schedule (with rcnn_pos_fraction 0.25) reached
segm mAP 0.291 (commit c63f31c); box classification was what limited it.

A scratch recipe as MMDetection's (mask_rcnn_r50_fpn_gn-all_scratch):
GroupNorm (trainable) in the backbone, the FPN and the mask head instead of
frozen ImageNet BatchNorm statistics. Every stage is the zoo models' (same
code, same MMDetection semantics); only sizes are small: fewer samples
(64 RoIs per image, half of them positive at most: rcnn_pos_fraction 0.5
instead of MMDetection's 0.25, which gives the box classifier twice the
positive samples), fewer proposals, narrower layers and a short schedule
(8 epochs of batch 4 = 800 steps, lr 0.02 not scaled, x0.1 after epochs
6 and 7; 5 epochs with one decay after epoch 4 reached only bbox/segm mAP
0.308 / 0.320).
"""

from maskrcnn_jax.config import base_config


def get_config():
  c = base_config()
  c.name = 'quickstart'
  c.mmdet.config = ''
  m = c.model
  m.num_classes = 4
  m.backbone.base_channels = 16
  m.backbone.frozen_stages = -1          # from scratch: train everything
  m.backbone.norm_requires_grad = True
  # GroupNorm throughout (16 groups: the narrowest stage has 16 channels).
  m.backbone.norm = 'GN'
  m.neck.norm = 'GN'
  m.roi.norm = 'GN'
  m.norm_groups = 16
  m.neck.in_channels = (64, 128, 256, 512)
  m.neck.out_channels = 64
  m.rpn.feat_channels = 64
  m.roi.mask_channels = 64
  m.roi.num_mask_convs = 2
  # The maps are small (P2 is 48 x 64 cells): RoIAlign as two matmuls per
  # level, no window gather (ops/roi_align.py); it needs the 'direct' mask
  # loss (set below, so that the recipe runs on any target).
  m.roi.roi_align_strategy = 'dense'

  c.input.test_scale = (256, 192)
  c.input.canvases = ((192, 256),)       # (H, W): every image is landscape

  c.test.rpn_nms_pre = 500
  c.test.rpn_max_per_img = 300
  c.test.max_candidates = 1024

  t = c.train
  t.scales = ((256, 192),)
  t.max_instances = 16
  t.mask_crop = 56
  t.rpn_proposal_nms_pre = 500
  t.rpn_proposal_max_per_img = 200
  t.rcnn_num_samples = 64
  t.rcnn_pos_fraction = 0.5             # MMDetection: 0.25
  t.mask_loss_strategy = 'direct'
  t.global_batch_size = 4
  t.base_lr = 0.02
  t.scale_lr = False
  t.warmup_iters = 100
  t.epochs = 8
  t.milestones = (6, 7)
  t.init_backbone = ''
  t.init_backbone_from = 'none'         # from scratch, no ImageNet weights
  t.log_every = 20
  t.checkpoint_every = 200
  # On 2 cores, loader worker processes would compete with XLA's threads;
  # loading in-process costs a few ms per image.
  t.num_workers = 0

  d = c.data
  d.root = 'work_dirs/quickstart_shapes4'
  d.train_ann = 'work_dirs/quickstart_shapes4/annotations/instances_train.json'
  d.train_images = 'work_dirs/quickstart_shapes4/train'
  d.val_ann = 'work_dirs/quickstart_shapes4/annotations/instances_val.json'
  d.val_images = 'work_dirs/quickstart_shapes4/val'
  # Four distinct shapes (no ellipse / hexagon, which at these sizes look
  # like circles), larger (radius 10-25% of the short side, default 6-22%)
  # and fewer per image (2-6, default 2-8) than the generator's defaults.
  d.synthetic = dict(num_train=400, num_val=50, image_size=256, seed=0,
                     landscape_fraction=1.0, radius_range=(0.10, 0.25),
                     num_shapes=(2, 6),
                     classes=('circle', 'square', 'triangle', 'star'))
  return c
