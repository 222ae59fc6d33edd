"""python train.py --config=configs/r50_fpn_fp16_1x.py

Eval:    python eval.py --config configs/r50_fpn_fp16_1x.py --checkpoint CKPT
Convert: python -m maskrcnn_jax.convert --config configs/r50_fpn_fp16_1x.py \
             --checkpoint <mmdet .pth> --out DIR

Mask R-CNN R-50-FPN FP16, pytorch style; 1x (12 epochs, lr x0.1 after epochs 8
and 11); single scale (1333, 800), bitmap GT masks. Trains in float16 with a
dynamic loss scale; evaluates in float32 (test.dtype).

MMDetection 3.x config: configs/mask_rcnn/mask-rcnn_r50_fpn_amp-1x_coco.py
Checkpoint: mask_rcnn_r50_fpn_fp16_1x_coco_20200205-59faf7e4.pth
  https://download.openmmlab.com/mmdetection/v2.0/fp16/mask_rcnn_r50_fpn_fp16_1x_coco/mask_rcnn_r50_fpn_fp16_1x_coco_20200205-59faf7e4.pth
Reported (COCO val2017): box AP 38.1, mask AP 34.7.
"""

from maskrcnn_jax.config import (
    MMDET_URL_ROOT, base_config, set_backbone, set_schedule)


def get_config():
  c = base_config()
  c.name = 'r50_fpn_fp16_1x'
  c.mmdet.config = 'mask-rcnn_r50_fpn_amp-1x_coco.py'
  c.mmdet.checkpoint = 'mask_rcnn_r50_fpn_fp16_1x_coco_20200205-59faf7e4.pth'
  c.mmdet.url = f'{MMDET_URL_ROOT}/fp16/mask_rcnn_r50_fpn_fp16_1x_coco/{c.mmdet.checkpoint}'
  c.mmdet.box_ap, c.mmdet.mask_ap = 38.1, 34.7
  set_backbone(c, depth=50, init_backbone='torchvision://resnet50')
  set_schedule(c, epochs=12, milestones=(8, 11))
  c.model.dtype = 'float16'
  # Today's 3.x AMP recipe (AmpOptimWrapper: dynamic GradScaler). The published
  # checkpoint (2020-02-05) was trained with mmdet's pre-AMP FP16 and a static
  # loss scale of 512 (spec 4), not this dynamic one.
  c.train.loss_scale = 'dynamic'
  # Training computes in float16; evaluation (during training, eval.py,
  # demo.py) is ordinary float32 inference, as MMDetection evaluates this
  # row (its test loop runs without autocast); only the 24.1 fps figure was
  # measured in FP16 mode (eval.py --dtype float16).
  c.test.dtype = 'float32'
  return c
