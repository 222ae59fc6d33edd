"""python train.py --config=configs/x101_32x4d_fpn_2x.py

Eval:    python eval.py --config configs/x101_32x4d_fpn_2x.py --checkpoint CKPT
Convert: python -m maskrcnn_jax.convert --config configs/x101_32x4d_fpn_2x.py \
             --checkpoint <mmdet .pth> --out DIR

Mask R-CNN X-101-32x4d-FPN, pytorch style; 2x (24 epochs, lr x0.1 after epochs
16 and 22); single scale (1333, 800), bitmap GT masks.

MMDetection 3.x config: configs/mask_rcnn/mask-rcnn_x101-32x4d_fpn_2x_coco.py
Checkpoint: mask_rcnn_x101_32x4d_fpn_2x_coco_bbox_mAP-0.422__segm_mAP-0.378_20200506_004702-faef898c.pth
  https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_x101_32x4d_fpn_2x_coco/mask_rcnn_x101_32x4d_fpn_2x_coco_bbox_mAP-0.422__segm_mAP-0.378_20200506_004702-faef898c.pth
Reported (COCO val2017): box AP 42.2, mask AP 37.8.
"""

from maskrcnn_jax.config import (
    MMDET_URL_ROOT, base_config, set_backbone, set_schedule)


def get_config():
  c = base_config()
  c.name = 'x101_32x4d_fpn_2x'
  c.mmdet.config = 'mask-rcnn_x101-32x4d_fpn_2x_coco.py'
  c.mmdet.checkpoint = 'mask_rcnn_x101_32x4d_fpn_2x_coco_bbox_mAP-0.422__segm_mAP-0.378_20200506_004702-faef898c.pth'
  c.mmdet.url = f'{MMDET_URL_ROOT}/mask_rcnn/mask_rcnn_x101_32x4d_fpn_2x_coco/{c.mmdet.checkpoint}'
  c.mmdet.box_ap, c.mmdet.mask_ap = 42.2, 37.8
  set_backbone(
      c, depth=101, groups=32, base_width=4,
      init_backbone='open-mmlab://resnext101_32x4d')
  set_schedule(c, epochs=24, milestones=(16, 22))
  return c
