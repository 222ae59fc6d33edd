"""python train.py --config=configs/x101_32x8d_fpn_1x.py

Eval:    python eval.py --config configs/x101_32x8d_fpn_1x.py --checkpoint CKPT
Convert: python -m maskrcnn_jax.convert --config configs/x101_32x8d_fpn_1x.py \
             --checkpoint <mmdet .pth> --out DIR

Mask R-CNN X-101-32x8d-FPN, pytorch style with Caffe2/FAIR weights (BGR input,
std, frozen BN); 1x (12 epochs, lr x0.1 after epochs 8 and 11); single scale
(1333, 800), bitmap GT masks.

MMDetection 3.x config: configs/mask_rcnn/mask-rcnn_x101-32x8d_fpn_1x_coco.py
Checkpoint: mask_rcnn_x101_32x8d_fpn_1x_coco_20220630_173841-0aaf329e.pth
  https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_x101_32x8d_fpn_1x_coco/mask_rcnn_x101_32x8d_fpn_1x_coco_20220630_173841-0aaf329e.pth
Reported (COCO val2017): box AP 42.8, mask AP 38.3.
"""

from maskrcnn_jax.config import (
    CAFFE2_X101_INPUT, MMDET_URL_ROOT, base_config, set_backbone,
    set_schedule)


def get_config():
  c = base_config()
  c.name = 'x101_32x8d_fpn_1x'
  c.mmdet.config = 'mask-rcnn_x101-32x8d_fpn_1x_coco.py'
  c.mmdet.checkpoint = 'mask_rcnn_x101_32x8d_fpn_1x_coco_20220630_173841-0aaf329e.pth'
  c.mmdet.url = f'{MMDET_URL_ROOT}/mask_rcnn/mask_rcnn_x101_32x8d_fpn_1x_coco/{c.mmdet.checkpoint}'
  c.mmdet.box_ap, c.mmdet.mask_ap = 42.8, 38.3
  # Caffe2/FAIR weights: BGR input with a std, BN fully frozen (spec 1).
  set_backbone(
      c, depth=101, groups=32, base_width=8, norm_requires_grad=False,
      input_norm=CAFFE2_X101_INPUT,
      init_backbone='open-mmlab://detectron2/resnext101_32x8d')
  set_schedule(c, epochs=12, milestones=(8, 11))
  return c
