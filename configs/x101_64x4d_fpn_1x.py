"""python train.py --config=configs/x101_64x4d_fpn_1x.py

Eval:    python eval.py --config configs/x101_64x4d_fpn_1x.py --checkpoint CKPT
Convert: python -m maskrcnn_jax.convert --config configs/x101_64x4d_fpn_1x.py \
             --checkpoint <mmdet .pth> --out DIR

Mask R-CNN X-101-64x4d-FPN, pytorch style; 1x (12 epochs, lr x0.1 after epochs
8 and 11); single scale (1333, 800), bitmap GT masks.

MMDetection 3.x config: configs/mask_rcnn/mask-rcnn_x101-64x4d_fpn_1x_coco.py
Checkpoint: mask_rcnn_x101_64x4d_fpn_1x_coco_20200201-9352eb0d.pth
  https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_x101_64x4d_fpn_1x_coco/mask_rcnn_x101_64x4d_fpn_1x_coco_20200201-9352eb0d.pth
Reported (COCO val2017): box AP 42.8, mask AP 38.4.
"""

from maskrcnn_jax.config import (
    MMDET_URL_ROOT, base_config, set_backbone, set_schedule)


def get_config():
  c = base_config()
  c.name = 'x101_64x4d_fpn_1x'
  c.mmdet.config = 'mask-rcnn_x101-64x4d_fpn_1x_coco.py'
  c.mmdet.checkpoint = 'mask_rcnn_x101_64x4d_fpn_1x_coco_20200201-9352eb0d.pth'
  c.mmdet.url = f'{MMDET_URL_ROOT}/mask_rcnn/mask_rcnn_x101_64x4d_fpn_1x_coco/{c.mmdet.checkpoint}'
  c.mmdet.box_ap, c.mmdet.mask_ap = 42.8, 38.4
  set_backbone(
      c, depth=101, groups=64, base_width=4,
      init_backbone='open-mmlab://resnext101_64x4d')
  set_schedule(c, epochs=12, milestones=(8, 11))
  return c
