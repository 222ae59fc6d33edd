"""ResNet-18/34 (BasicBlock) against a PyTorch ResNet written here.

MMDetection's ResNet(depth=18/34) is torchvision's: BasicBlocks of two 3x3
convs (stride on the first), a 1x1 conv + BN shortcut only where the stride
or width changes (not in layer1), zero_init_residual on norm2. The torch
model below is built from those rules, fed a torchvision-layout .pth, and
the converted Flax backbone must give the same C2..C5.
"""

import numpy as np
import pytest

from maskrcnn_jax import config as config_lib
from maskrcnn_jax.models import build
from maskrcnn_jax.models import resnet
from maskrcnn_jax.train import init as init_lib

torch = pytest.importorskip('torch')
nn = torch.nn


class TorchBasicBlock(nn.Module):

  def __init__(self, inplanes, planes, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(
          nn.Conv2d(inplanes, planes, 1, stride, bias=False),
          nn.BatchNorm2d(planes))

  def forward(self, x):
    out = torch.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = x if self.downsample is None else self.downsample(x)
    return torch.relu(out + identity)


class TorchResNet(nn.Module):

  def __init__(self, stage_blocks, base):
    super().__init__()
    self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(base)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = base
    for s, n in enumerate(stage_blocks):
      planes = base * 2 ** s
      blocks = []
      for b in range(n):
        blocks.append(TorchBasicBlock(inplanes, planes,
                                      2 if (b == 0 and s > 0) else 1))
        inplanes = planes
      setattr(self, f'layer{s + 1}', nn.Sequential(*blocks))
    self.fc = nn.Linear(inplanes, 1000)

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    outs = []
    for s in range(4):
      x = getattr(self, f'layer{s + 1}')(x)
      outs.append(x)
    return outs


def _randomise(model, seed):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if name.endswith('num_batches_tracked'):
        continue
      if name.endswith('running_var'):
        t.copy_(0.5 + 1.5 * torch.rand(t.shape, generator=gen))
      elif name.endswith('.weight') and t.ndim == 4:
        fan_in = t.shape[1] * t.shape[2] * t.shape[3]
        t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
      else:
        t.copy_(0.2 * torch.randn(t.shape, generator=gen))
  return model.eval()


@pytest.mark.parametrize('depth', [18, 34])
def test_basic_block_resnet_matches_pytorch(depth, tmp_path):
  base = 16
  config = config_lib.load_config('configs/r50_fpn_1x.py', [
      f'model.backbone.depth={depth}', f'model.backbone.base_channels={base}',
      f'model.neck.in_channels={tuple(base * 2 ** i for i in range(4))!r}',
      'model.neck.out_channels=64'])
  torch_model = _randomise(
      TorchResNet(resnet.STAGE_BLOCKS[depth], base), seed=depth)
  path = str(tmp_path / f'resnet{depth}.pth')
  torch.save(torch_model.state_dict(), path)   # torchvision's layout

  variables = init_lib.load_imagenet_backbone(
      build.abstract_variables(config), config, path)
  backbone = variables['params']['backbone']
  assert 'downsample' not in backbone['layer1']['0']
  assert 'downsample' in backbone['layer2']['0']
  assert 'conv3' not in backbone['layer4']['1']
  assert len(backbone['layer3']) == resnet.STAGE_BLOCKS[depth][2]

  image = np.random.default_rng(0).standard_normal((2, 96, 128, 3))
  image = image.astype(np.float32)
  with torch.no_grad():
    want = [t.numpy().transpose(0, 2, 3, 1)
            for t in torch_model(torch.from_numpy(image.transpose(0, 3, 1, 2)))]
  model = resnet.ResNet(depth=depth, base_channels=base)
  got = model.apply({'params': backbone,
                     'batch_stats': variables['batch_stats']['backbone']},
                    image)
  assert [g.shape for g in got] == [w.shape for w in want]
  assert [g.shape[-1] for g in got] == [base, 2 * base, 4 * base, 8 * base]
  for level, (g, w) in enumerate(zip(got, want)):
    scale = np.abs(w).max()
    np.testing.assert_allclose(np.asarray(g) / scale, w / scale, atol=2e-5,
                               err_msg=f'C{level + 2}')


def test_basic_block_init_and_errors():
  model = resnet.ResNet(depth=18, base_channels=8, norm='GN', num_groups=4)
  import jax  # pylint: disable=g-import-not-at-top
  params = model.init(jax.random.PRNGKey(0),
                      np.zeros((1, 64, 64, 3), np.float32))['params']
  # zero_init_residual: each block's last norm starts at 0 (MMDetection).
  assert not np.any(params['layer2']['1']['gn2']['scale'])
  assert np.all(params['layer2']['1']['gn1']['scale'] == 1)
  with pytest.raises(ValueError, match='groups=32'):
    resnet.ResNet(depth=18, groups=32).init(
        jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32))
  config = config_lib.load_config('configs/r50_fpn_1x.py',
                                  ['model.backbone.depth=18'])
  with pytest.raises(ValueError, match=r'depth 18 \(1 \* 64'):
    build.build_model(config)
