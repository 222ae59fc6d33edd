"""python train.py --config=configs/r101_fpn_1x.py

Eval:    python eval.py --config configs/r101_fpn_1x.py --checkpoint CKPT
Convert: python -m maskrcnn_jax.convert --config configs/r101_fpn_1x.py \
             --checkpoint <mmdet .pth> --out DIR

Mask R-CNN R-101-FPN, pytorch style; 1x (12 epochs, lr x0.1 after epochs 8 and
11); single scale (1333, 800), bitmap GT masks.

MMDetection 3.x config: configs/mask_rcnn/mask-rcnn_r101_fpn_1x_coco.py
Checkpoint: mask_rcnn_r101_fpn_1x_coco_20200204-1efe0ed5.pth
  https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_r101_fpn_1x_coco/mask_rcnn_r101_fpn_1x_coco_20200204-1efe0ed5.pth
Reported (COCO val2017): box AP 40.0, mask AP 36.1.
"""

from maskrcnn_jax.config import (
    MMDET_URL_ROOT, base_config, set_backbone, set_schedule)


def get_config():
  c = base_config()
  c.name = 'r101_fpn_1x'
  c.mmdet.config = 'mask-rcnn_r101_fpn_1x_coco.py'
  c.mmdet.checkpoint = 'mask_rcnn_r101_fpn_1x_coco_20200204-1efe0ed5.pth'
  c.mmdet.url = f'{MMDET_URL_ROOT}/mask_rcnn/mask_rcnn_r101_fpn_1x_coco/{c.mmdet.checkpoint}'
  c.mmdet.box_ap, c.mmdet.mask_ap = 40.0, 36.1
  set_backbone(c, depth=101, init_backbone='torchvision://resnet101')
  set_schedule(c, epochs=12, milestones=(8, 11))
  return c
