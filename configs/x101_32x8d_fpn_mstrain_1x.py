"""python train.py --config=configs/x101_32x8d_fpn_mstrain_1x.py

Eval:    python eval.py --config configs/x101_32x8d_fpn_mstrain_1x.py --checkpoint CKPT
Convert: python -m maskrcnn_jax.convert --config configs/x101_32x8d_fpn_mstrain_1x.py \
             --checkpoint <mmdet .pth> --out DIR

Mask R-CNN X-101-32x8d-FPN, pytorch style with Caffe2/FAIR weights (BGR input,
std, frozen BN); 1x (12 epochs, lr x0.1 after epochs 8 and 11); multi-scale
"choice of 6" (short side in {640, 672, 704, 736, 768, 800}, long <= 1333),
polygon GT masks.

MMDetection 3.x config: configs/mask_rcnn/mask-rcnn_x101-32x8d_fpn_ms-poly-1x_coco.py
Checkpoint: mask_rcnn_x101_32x8d_fpn_mstrain-poly_1x_coco_20220630_170346-b4637974.pth
  https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_x101_32x8d_fpn_mstrain-poly_1x_coco/mask_rcnn_x101_32x8d_fpn_mstrain-poly_1x_coco_20220630_170346-b4637974.pth
Reported (COCO val2017): box AP 43.4, mask AP 39.0.
"""

from maskrcnn_jax.config import (
    CAFFE2_X101_INPUT, MMDET_URL_ROOT, base_config, set_backbone,
    set_schedule, set_train_scales)


def get_config():
  c = base_config()
  c.name = 'x101_32x8d_fpn_mstrain_1x'
  c.mmdet.config = 'mask-rcnn_x101-32x8d_fpn_ms-poly-1x_coco.py'
  c.mmdet.checkpoint = 'mask_rcnn_x101_32x8d_fpn_mstrain-poly_1x_coco_20220630_170346-b4637974.pth'
  c.mmdet.url = f'{MMDET_URL_ROOT}/mask_rcnn/mask_rcnn_x101_32x8d_fpn_mstrain-poly_1x_coco/{c.mmdet.checkpoint}'
  # URL directory follows MMDetection's <model name>/ convention; this row's
  # URL was not seen verbatim (unverified).
  c.mmdet.box_ap, c.mmdet.mask_ap = 43.4, 39.0
  # Caffe2/FAIR weights: BGR input with a std, BN fully frozen (spec 1).
  set_backbone(
      c, depth=101, groups=32, base_width=8, norm_requires_grad=False,
      input_norm=CAFFE2_X101_INPUT,
      init_backbone='open-mmlab://detectron2/resnext101_32x8d')
  set_schedule(c, epochs=12, milestones=(8, 11))
  set_train_scales(c, 'choice')  # short side in {640, 672, ..., 800}
  c.train.mask_format = 'polygon'  # *ms-poly*: PolygonMasks, no poly2mask
  return c
