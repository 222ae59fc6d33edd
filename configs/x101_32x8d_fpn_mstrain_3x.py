"""python train.py --config=configs/x101_32x8d_fpn_mstrain_3x.py

Eval:    python eval.py --config configs/x101_32x8d_fpn_mstrain_3x.py --checkpoint CKPT
Convert: python -m maskrcnn_jax.convert --config configs/x101_32x8d_fpn_mstrain_3x.py \
             --checkpoint <mmdet .pth> --out DIR

Mask R-CNN X-101-32x8d-FPN, pytorch style with Caffe2/FAIR weights (BGR input,
std, frozen BN); 3x (RepeatDataset x3, 12 epochs of it, lr x0.1 after epochs 9
and 11 = 36 passes); multi-scale "range" (short side uniform in [640, 800],
long <= 1333), polygon GT masks.

MMDetection 3.x config: configs/mask_rcnn/mask-rcnn_x101-32x8d_fpn_ms-poly-3x_coco.py
Checkpoint: mask_rcnn_x101_32x8d_fpn_mstrain-poly_3x_coco_20210607_161042-8bd2c639.pth
  https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_x101_32x8d_fpn_mstrain-poly_3x_coco/mask_rcnn_x101_32x8d_fpn_mstrain-poly_3x_coco_20210607_161042-8bd2c639.pth
Reported (COCO val2017): box AP 44.3, mask AP 39.5.
"""

from maskrcnn_jax.config import (
    CAFFE2_X101_INPUT, MMDET_URL_ROOT, base_config, set_backbone,
    set_schedule, set_train_scales)


def get_config():
  c = base_config()
  c.name = 'x101_32x8d_fpn_mstrain_3x'
  c.mmdet.config = 'mask-rcnn_x101-32x8d_fpn_ms-poly-3x_coco.py'
  c.mmdet.checkpoint = 'mask_rcnn_x101_32x8d_fpn_mstrain-poly_3x_coco_20210607_161042-8bd2c639.pth'
  c.mmdet.url = f'{MMDET_URL_ROOT}/mask_rcnn/mask_rcnn_x101_32x8d_fpn_mstrain-poly_3x_coco/{c.mmdet.checkpoint}'
  c.mmdet.box_ap, c.mmdet.mask_ap = 44.3, 39.5
  # Caffe2/FAIR weights: BGR input with a std, BN fully frozen (spec 1).
  set_backbone(
      c, depth=101, groups=32, base_width=8, norm_requires_grad=False,
      input_norm=CAFFE2_X101_INPUT,
      init_backbone='open-mmlab://detectron2/resnext101_32x8d')
  # RepeatDataset(times=3): 12 "epochs" of the 3x-repeated set = 36 passes,
  # lr x0.1 after passes 27 and 33 (configs/common/ms-poly_3x_coco-instance.py).
  set_schedule(c, epochs=12, milestones=(9, 11), repeats=3)
  set_train_scales(c, 'range')  # short side uniform in [640, 800]
  c.train.mask_format = 'polygon'  # *ms-poly*: PolygonMasks, no poly2mask
  return c
