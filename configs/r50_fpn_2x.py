"""python train.py --config=configs/r50_fpn_2x.py

Eval:    python eval.py --config configs/r50_fpn_2x.py --checkpoint CKPT
Convert: python -m maskrcnn_jax.convert --config configs/r50_fpn_2x.py \
             --checkpoint <mmdet .pth> --out DIR

Mask R-CNN R-50-FPN, pytorch style; 2x (24 epochs, lr x0.1 after epochs 16 and
22); single scale (1333, 800), bitmap GT masks.

MMDetection 3.x config: configs/mask_rcnn/mask-rcnn_r50_fpn_2x_coco.py
Checkpoint: mask_rcnn_r50_fpn_2x_coco_bbox_mAP-0.392__segm_mAP-0.354_20200505_003907-3e542a40.pth
  https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_r50_fpn_2x_coco/mask_rcnn_r50_fpn_2x_coco_bbox_mAP-0.392__segm_mAP-0.354_20200505_003907-3e542a40.pth
Reported (COCO val2017): box AP 39.2, mask AP 35.4.
"""

from maskrcnn_jax.config import (
    MMDET_URL_ROOT, base_config, set_backbone, set_schedule)


def get_config():
  c = base_config()
  c.name = 'r50_fpn_2x'
  c.mmdet.config = 'mask-rcnn_r50_fpn_2x_coco.py'
  c.mmdet.checkpoint = 'mask_rcnn_r50_fpn_2x_coco_bbox_mAP-0.392__segm_mAP-0.354_20200505_003907-3e542a40.pth'
  c.mmdet.url = f'{MMDET_URL_ROOT}/mask_rcnn/mask_rcnn_r50_fpn_2x_coco/{c.mmdet.checkpoint}'
  c.mmdet.box_ap, c.mmdet.mask_ap = 39.2, 35.4
  set_backbone(c, depth=50, init_backbone='torchvision://resnet50')
  set_schedule(c, epochs=24, milestones=(16, 22))
  return c
