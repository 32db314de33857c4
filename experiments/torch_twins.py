"""PyTorch twins of every cnnjax model, for the benchmark's side-by-side timing.

Each twin has the architecture of the cnnjax model of the same name (layer order, kernel
sizes, padding, strides, biases, BatchNorm after the same convolutions with the same
epsilon and running-average momentum, dropout where the cnnjax model has it) and the same
parameter count, which `twin` checks against the cnnjax model for the input shape used.
Layouts differ only where the frameworks do: NCHW here, NHWC in cnnjax; Flax's BatchNorm
``momentum=0.9`` is PyTorch's ``momentum=0.1``.
"""

from __future__ import annotations

import torch
from torch import nn

_BN = dict(eps=1e-5, momentum=0.1)  # = layers.BatchNorm(momentum=0.9, epsilon=1e-5)


def _flat(c: int, h: int, w: int) -> int:
  return c * h * w


def simple_cnn(shape):
  h, w, c = shape
  return nn.Sequential(
      nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
      nn.Linear(_flat(32, h // 4, w // 4), 256), nn.ReLU(), nn.Linear(256, 10))


def keras_cifar_cnn(shape):
  h, w, c = shape
  side = lambda n: ((n - 2) // 2 - 2) // 2 - 2
  return nn.Sequential(
      nn.Conv2d(c, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
      nn.MaxPool2d(2), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
      nn.Linear(_flat(64, side(h), side(w)), 64), nn.ReLU(), nn.Linear(64, 10))


def mnist_cnn(shape):
  # Even sides (28 -> 14 -> 7): 'same' 2x2 pooling needs no padding, so MaxPool2d(2) matches.
  h, w, c = shape
  return nn.Sequential(
      nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
      nn.Linear(_flat(64, h // 4, w // 4), 1024), nn.ReLU(), nn.Dropout(0.5),
      nn.Linear(1024, 10))


def lenet5(shape):
  h, w, c = shape
  side = lambda n: (n // 2 - 4) // 2
  return nn.Sequential(
      nn.Conv2d(c, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
      nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
      nn.Linear(_flat(16, side(h), side(w)), 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
      nn.Linear(84, 10))


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
  return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, **_BN),
          nn.ReLU()]


def _stages(cin: int, stages) -> tuple[list[nn.Module], int]:
  modules = []
  for widths in stages:
    for width in widths:
      modules += _conv_bn_relu(cin, width)
      cin = width
    modules.append(nn.MaxPool2d(2))
  return modules, cin


def bn_cnn(shape):
  h, w, c = shape
  modules, cout = _stages(c, ((32, 32), (64, 64)))
  return nn.Sequential(*modules, nn.Flatten(), nn.Linear(_flat(cout, h // 4, w // 4), 10))


def vgg_small(shape):
  _, _, c = shape
  modules, cout = _stages(c, ((64, 64), (128, 128), (256, 256)))
  return nn.Sequential(*modules, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cout, 10))


class _BasicBlock(nn.Module):
  """conv3x3(stride) BN ReLU conv3x3 BN + shortcut, ReLU (He et al. 2016)."""

  def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout, **_BN)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout, **_BN)
    self.stride, self.extra, self.project = stride, cout - cin, None
    if (stride != 1 or cin != cout) and shortcut == "B":
      self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout, **_BN))

  def forward(self, x):
    y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
    if self.project is not None:
      residual = self.project(x)
    else:  # option A: subsample, zero-pad the new channels (split as cnnjax does)
      residual = x[:, :, ::self.stride, ::self.stride] if self.stride != 1 else x
      if self.extra:
        residual = nn.functional.pad(residual, (0, 0, 0, 0, self.extra // 2,
                                                self.extra - self.extra // 2))
    return torch.relu(y + residual)


class _CifarResNet(nn.Module):

  def __init__(self, cin: int, stage_sizes, widths, shortcut: str):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(cin, widths[0], 3, padding=1, bias=False),
                              nn.BatchNorm2d(widths[0], **_BN), nn.ReLU())
    blocks, c = [], widths[0]
    for s, (n, width) in enumerate(zip(stage_sizes, widths)):
      for b in range(n):
        blocks.append(_BasicBlock(c, width, 2 if s > 0 and b == 0 else 1, shortcut))
        c = width
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(c, 10)

  def forward(self, x):
    return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def resnet20(shape):
  return _CifarResNet(shape[-1], (3, 3, 3), (16, 32, 64), "A")


def resnet18(shape):
  return _CifarResNet(shape[-1], (2, 2, 2, 2), (64, 128, 256, 512), "B")


def tiny_cnn(shape):
  h, w, c = shape
  modules, cout = _stages(c, ((4,), (8,)))
  return nn.Sequential(*modules, nn.Flatten(), nn.Linear(_flat(cout, h // 4, w // 4), 10))


TWINS = {f.__name__: f for f in (simple_cnn, keras_cifar_cnn, mnist_cnn, lenet5, bn_cnn,
                                 vgg_small, resnet20, resnet18, tiny_cnn)}


def twin(name: str, shape: tuple[int, int, int], expected_params: int) -> nn.Module:
  """The PyTorch twin of cnnjax model ``name`` for [H, W, C] ``shape``.

  Raises:
    KeyError: no twin for ``name``.
    ValueError: the twin's parameter count differs from ``expected_params`` (cnnjax's).
  """
  net = TWINS[name](shape)
  n = sum(p.numel() for p in net.parameters())
  if n != expected_params:
    raise ValueError(f"PyTorch {name} has {n:,} parameters, cnnjax's has {expected_params:,}")
  return net


def load_cnnjax_variables(net: nn.Module, model, variables,
                          shape: tuple[int, int, int]) -> nn.Module:
  """Copies cnnjax ``variables`` (params and BatchNorm statistics) of ``model`` into ``net``.

  The twins build their layers in the order the cnnjax model calls them (the order
  `cnnjax.inspection.layer_table` lists), so the i-th conv / BatchNorm / dense layer of
  one is the i-th of the other. Layout changes: conv kernels HWIO -> OIHW, dense kernels
  [in, out] -> [out, in], and the first dense layer after a flatten has its inputs
  permuted from NHWC to NCHW order.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cnnjax import inspection  # pylint: disable=g-import-not-at-top

  flat_shapes = []
  hooks = [m.register_forward_hook(lambda mod, i, o: flat_shapes.append(i[0].shape))
           for m in net.modules() if isinstance(m, nn.Flatten)]
  with torch.no_grad():
    net.eval()(torch.zeros(1, shape[2], shape[0], shape[1]))
  for h in hooks:
    h.remove()

  def at(tree, path):
    for key in path.split("/"):
      tree = tree[key]
    return {k: np.array(v) for k, v in tree.items()}

  layers = [(r.kind, r.path) for r in inspection.layer_table(model, shape)
            if r.kind in ("Conv", "BatchNorm", "Dense")]
  torch_layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d,
                                                             nn.Linear))]
  if len(layers) != len(torch_layers):
    raise ValueError(f"cnnjax has {len(layers)} layers with parameters, the twin "
                     f"{len(torch_layers)}")
  t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
  with torch.no_grad():
    for (kind, path), module in zip(layers, torch_layers):
      p = at(variables["params"], path)
      if kind == "Conv":
        module.weight.copy_(t(p["kernel"].transpose(3, 2, 0, 1)))
      elif kind == "BatchNorm":
        stats = at(variables["batch_stats"], path)
        module.weight.copy_(t(p["scale"]))
        module.running_mean.copy_(t(stats["mean"]))
        module.running_var.copy_(t(stats["var"]))
      else:
        kernel = p["kernel"]
        if flat_shapes and module.in_features == int(np.prod(flat_shapes[0][1:])):
          _, c, h, w = flat_shapes.pop(0)
          kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
        module.weight.copy_(t(kernel.T))
      if "bias" in p and module.bias is not None:
        module.bias.copy_(t(p["bias"]))
  return net
