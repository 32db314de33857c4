"""A DCGAN-style generator and discriminator pair, sized to the dataset's images.

Unlike the classifiers of `cnnjax.models.MODELS` (images -> logits), a GAN is two
networks: ``generator`` maps latent vectors ``z`` ``[N, latent_dim]`` to images in [0, 1],
``discriminator`` maps images to one raw score each. `DCGAN` holds both, so one module
(and one ``implementation``) describes the pair; its methods apply one network:
``model.apply(v, z, train=...)`` generates, ``method=DCGAN.discriminate`` scores, and
``method=DCGAN.initialize`` touches both (for ``init``). Variables are
``{"params": {"generator": ..., "discriminator": ...}, "batch_stats": {"generator": ...}}``.

Shapes follow Radford et al. 2016 (DCGAN): the generator projects ``z`` to an
``(H/4, W/4, 4w)`` map, then two x2 stages halve the channels (``2w``, ``w``) with
BatchNorm and ReLU, and a 3x3 convolution to C channels with a sigmoid. Each stage
upsamples by nearest neighbour and convolves (3x3) instead of a transposed
convolution, which avoids checkerboard artefacts (Odena, Dumoulin & Olah 2016) and keeps
every convolution a `layers.Conv`. The discriminator mirrors it: a 3x3 conv with ``w``
channels, then 3x3 stride-2 convs with ``2w`` and ``4w``, LeakyReLU(0.2), and a dense
score. It has no BatchNorm, so each example's score depends on that example only, which
the R1 penalty's per-example gradient needs (StyleGAN's discriminators have none either).
H and W must be multiples of 4 (8x8 digits, 28x28 MNIST, 32x32 CIFAR).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from cnnjax.models import layers
from cnnjax.models.layers import Dtype


def _upsample(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling of ``[N, H, W, C]``."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class DCGANGenerator(nn.Module):
  """``z [N, latent_dim] -> images [N, H, W, C]`` in [0, 1] (see the module docstring)."""
  image_shape: tuple[int, int, int]
  width: int = 32
  dtype: Dtype = jnp.float32
  implementation: str = "auto"
  bn_axis_name: str | None = None
  bn_ghost_batches: int = 1

  def _bn_relu(self, x: jax.Array, train: bool, name: str) -> jax.Array:
    return layers.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name,
                            ghost_batches=self.bn_ghost_batches, dtype=self.dtype,
                            implementation=self.implementation, name=name)(x, relu=True)

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    h, w, c = self.image_shape
    x = layers.Dense(h // 4 * (w // 4) * 4 * self.width, dtype=self.dtype, name="project")(z)
    x = self._bn_relu(x.reshape(z.shape[0], h // 4, w // 4, 4 * self.width), train, "bn0")
    for i, channels in enumerate((2 * self.width, self.width), start=1):
      x = layers.Conv(channels, (3, 3), use_bias=False, dtype=self.dtype,
                      implementation=self.implementation, name=f"conv{i}")(_upsample(x))
      x = self._bn_relu(x, train, f"bn{i}")
    x = layers.Conv(c, (3, 3), dtype=self.dtype, implementation=self.implementation,
                    name="to_image")(x)
    return jax.nn.sigmoid(x.astype(jnp.float32))


class DCGANDiscriminator(nn.Module):
  """``images [N, H, W, C] -> scores [N]`` (raw, no sigmoid; see the module docstring)."""
  width: int = 32
  dtype: Dtype = jnp.float32
  implementation: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, (channels, stride) in enumerate(
        ((self.width, 1), (2 * self.width, 2), (4 * self.width, 2)), start=1):
      x = layers.Conv(channels, (3, 3), strides=stride, dtype=self.dtype,
                      implementation=self.implementation, name=f"conv{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    x = layers.Dense(1, dtype=self.dtype, name="score")(layers.Flatten(name="flatten")(x))
    return x[:, 0].astype(jnp.float32)


class DCGAN(nn.Module):
  """A `DCGANGenerator` and a `DCGANDiscriminator` for images of ``image_shape``.

  Attributes:
    image_shape: (H, W, C), H and W multiples of 4.
    latent_dim: size of ``z``.
    width: the channel unit ``w`` of both networks.
    dtype: compute dtype (parameters stay float32).
    implementation: the `fast_ops` formulation of every convolution.
    bn_axis_name, bn_ghost_batches: the generator's BatchNorm (`layers.BatchNorm`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> gan = DCGAN(image_shape=(8, 8, 1))
    >>> z, x = jnp.zeros((2, gan.latent_dim)), jnp.zeros((2, 8, 8, 1))
    >>> v = jax.eval_shape(lambda: gan.init(jax.random.key(0), z, x, method=DCGAN.initialize))
    >>> sorted(v["params"]), sorted(v["batch_stats"])
    (['discriminator', 'generator'], ['generator'])
    >>> jax.eval_shape(lambda v: gan.apply(v, z, train=False), v).shape
    (2, 8, 8, 1)
  """
  image_shape: tuple[int, int, int]
  latent_dim: int = 32
  width: int = 32
  dtype: Dtype = jnp.float32
  implementation: str = "auto"
  bn_axis_name: str | None = None
  bn_ghost_batches: int = 1

  def setup(self):
    h, w, _ = self.image_shape
    if h % 4 or w % 4:
      raise ValueError(f"DCGAN needs image sides that are multiples of 4, got {h}x{w}")
    self.generator = DCGANGenerator(
        image_shape=tuple(self.image_shape), width=self.width, dtype=self.dtype,
        implementation=self.implementation, bn_axis_name=self.bn_axis_name,
        bn_ghost_batches=self.bn_ghost_batches)
    self.discriminator = DCGANDiscriminator(width=self.width, dtype=self.dtype,
                                            implementation=self.implementation)

  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    """Generates images ``[N, H, W, C]`` in [0, 1] from ``z`` ``[N, latent_dim]``."""
    return self.generator(z, train=train)

  def discriminate(self, x: jax.Array) -> jax.Array:
    """Raw discriminator scores ``[N]`` of images ``[N, H, W, C]``."""
    return self.discriminator(x)

  def initialize(self, z: jax.Array, x: jax.Array):
    """Both networks once (what ``init`` needs to create every variable)."""
    return self.generator(z, train=False), self.discriminator(x)


GAN_MODELS = {"dcgan": DCGAN}
