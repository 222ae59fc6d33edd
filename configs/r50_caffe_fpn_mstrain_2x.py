"""python train.py --config=configs/r50_caffe_fpn_mstrain_2x.py

Eval:    python eval.py --config configs/r50_caffe_fpn_mstrain_2x.py --checkpoint CKPT
Convert: python -m maskrcnn_jax.convert --config configs/r50_caffe_fpn_mstrain_2x.py \
             --checkpoint <mmdet .pth> --out DIR

Mask R-CNN R-50-FPN, caffe style (BGR input, mean only, frozen BN); 2x (24
epochs, lr x0.1 after epochs 16 and 23, the recorded 2.x recipe); multi-scale
"choice of 6" (short side in {640, 672, 704, 736, 768, 800}, long <= 1333),
polygon GT masks.

MMDetection 3.x config: configs/mask_rcnn/mask-rcnn_r50-caffe_fpn_ms-poly-2x_coco.py
Checkpoint: mask_rcnn_r50_caffe_fpn_mstrain-poly_2x_coco_bbox_mAP-0.403__segm_mAP-0.365_20200504_231822-a75c98ce.pth
  https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_r50_caffe_fpn_mstrain-poly_2x_coco/mask_rcnn_r50_caffe_fpn_mstrain-poly_2x_coco_bbox_mAP-0.403__segm_mAP-0.365_20200504_231822-a75c98ce.pth
Reported (COCO val2017): box AP 40.3, mask AP 36.5.
"""

from maskrcnn_jax.config import (
    MMDET_URL_ROOT, base_config, set_backbone, set_schedule,
    set_train_scales)


def get_config():
  c = base_config()
  c.name = 'r50_caffe_fpn_mstrain_2x'
  c.mmdet.config = 'mask-rcnn_r50-caffe_fpn_ms-poly-2x_coco.py'
  c.mmdet.checkpoint = 'mask_rcnn_r50_caffe_fpn_mstrain-poly_2x_coco_bbox_mAP-0.403__segm_mAP-0.365_20200504_231822-a75c98ce.pth'
  c.mmdet.url = f'{MMDET_URL_ROOT}/mask_rcnn/mask_rcnn_r50_caffe_fpn_mstrain-poly_2x_coco/{c.mmdet.checkpoint}'
  c.mmdet.box_ap, c.mmdet.mask_ap = 40.3, 36.5
  set_backbone(
      c, depth=50, style='caffe', norm_requires_grad=False,
      init_backbone='open-mmlab://detectron2/resnet50_caffe')
  # The checkpoint was trained with the 2.x config's step=[16, 23]
  # (482fcfa9); today's 3.x config says milestones [16, 22]. We follow the
  # recorded recipe.
  set_schedule(c, epochs=24, milestones=(16, 23))
  set_train_scales(c, 'choice')  # short side in {640, 672, ..., 800}
  c.train.mask_format = 'polygon'  # *ms-poly*: PolygonMasks, no poly2mask
  return c
