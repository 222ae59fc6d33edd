"""python train.py --config=configs/r101_fpn_mstrain_3x.py

Eval:    python eval.py --config configs/r101_fpn_mstrain_3x.py --checkpoint CKPT
Convert: python -m maskrcnn_jax.convert --config configs/r101_fpn_mstrain_3x.py \
             --checkpoint <mmdet .pth> --out DIR

Mask R-CNN R-101-FPN, pytorch style; 3x (RepeatDataset x3, 12 epochs of it, lr
x0.1 after epochs 9 and 11 = 36 passes); multi-scale "range" (short side
uniform in [640, 800], long <= 1333), polygon GT masks.

MMDetection 3.x config: configs/mask_rcnn/mask-rcnn_r101_fpn_ms-poly-3x_coco.py
Checkpoint: mask_rcnn_r101_fpn_mstrain-poly_3x_coco_20210524_200244-5675c317.pth
  https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_r101_fpn_mstrain-poly_3x_coco/mask_rcnn_r101_fpn_mstrain-poly_3x_coco_20210524_200244-5675c317.pth
Reported (COCO val2017): box AP 42.7, mask AP 38.5.
"""

from maskrcnn_jax.config import (
    MMDET_URL_ROOT, base_config, set_backbone, set_schedule,
    set_train_scales)


def get_config():
  c = base_config()
  c.name = 'r101_fpn_mstrain_3x'
  c.mmdet.config = 'mask-rcnn_r101_fpn_ms-poly-3x_coco.py'
  c.mmdet.checkpoint = 'mask_rcnn_r101_fpn_mstrain-poly_3x_coco_20210524_200244-5675c317.pth'
  c.mmdet.url = f'{MMDET_URL_ROOT}/mask_rcnn/mask_rcnn_r101_fpn_mstrain-poly_3x_coco/{c.mmdet.checkpoint}'
  c.mmdet.box_ap, c.mmdet.mask_ap = 42.7, 38.5
  set_backbone(c, depth=101, init_backbone='torchvision://resnet101')
  # RepeatDataset(times=3): 12 "epochs" of the 3x-repeated set = 36 passes,
  # lr x0.1 after passes 27 and 33 (configs/common/ms-poly_3x_coco-instance.py).
  set_schedule(c, epochs=12, milestones=(9, 11), repeats=3)
  set_train_scales(c, 'range')  # short side uniform in [640, 800]
  c.train.mask_format = 'polygon'  # *ms-poly*: PolygonMasks, no poly2mask
  return c
