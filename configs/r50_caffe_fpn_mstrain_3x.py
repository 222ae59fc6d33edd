"""python train.py --config=configs/r50_caffe_fpn_mstrain_3x.py

Eval:    python eval.py --config configs/r50_caffe_fpn_mstrain_3x.py --checkpoint CKPT
Convert: python -m maskrcnn_jax.convert --config configs/r50_caffe_fpn_mstrain_3x.py \
             --checkpoint <mmdet .pth> --out DIR

Mask R-CNN R-50-FPN, caffe style (BGR input, mean only, frozen BN); 3x (36
epochs, lr x0.1 after epochs 28 and 34, the recorded 2.x recipe); multi-scale
"choice of 6" (short side in {640, 672, 704, 736, 768, 800}, long <= 1333),
polygon GT masks.

MMDetection 3.x config: configs/mask_rcnn/mask-rcnn_r50-caffe_fpn_ms-poly-3x_coco.py
Checkpoint: mask_rcnn_r50_caffe_fpn_mstrain-poly_3x_coco_bbox_mAP-0.408__segm_mAP-0.37_20200504_163245-42aa3d00.pth
  https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_r50_caffe_fpn_mstrain-poly_3x_coco/mask_rcnn_r50_caffe_fpn_mstrain-poly_3x_coco_bbox_mAP-0.408__segm_mAP-0.37_20200504_163245-42aa3d00.pth
Reported (COCO val2017): box AP 40.8, mask AP 37.0.
"""

from maskrcnn_jax.config import (
    MMDET_URL_ROOT, base_config, set_backbone, set_schedule,
    set_train_scales)


def get_config():
  c = base_config()
  c.name = 'r50_caffe_fpn_mstrain_3x'
  c.mmdet.config = 'mask-rcnn_r50-caffe_fpn_ms-poly-3x_coco.py'
  c.mmdet.checkpoint = 'mask_rcnn_r50_caffe_fpn_mstrain-poly_3x_coco_bbox_mAP-0.408__segm_mAP-0.37_20200504_163245-42aa3d00.pth'
  c.mmdet.url = f'{MMDET_URL_ROOT}/mask_rcnn/mask_rcnn_r50_caffe_fpn_mstrain-poly_3x_coco/{c.mmdet.checkpoint}'
  c.mmdet.box_ap, c.mmdet.mask_ap = 40.8, 37.0
  set_backbone(
      c, depth=50, style='caffe', norm_requires_grad=False,
      init_backbone='open-mmlab://detectron2/resnet50_caffe')
  # Trained with step=[28, 34] over 36 epochs, no RepeatDataset. The 3.x config
  # has MultiStepLR(begin=0, end=24, milestones=[28, 34]): mmengine only steps a
  # scheduler while begin <= epoch < end, so milestones 28/34 are never reached
  # and the lr never decays there (a bug). We follow the recorded recipe.
  set_schedule(c, epochs=36, milestones=(28, 34), repeats=1)
  set_train_scales(c, 'choice')  # short side in {640, 672, ..., 800}
  c.train.mask_format = 'polygon'  # *ms-poly*: PolygonMasks, no poly2mask
  return c
