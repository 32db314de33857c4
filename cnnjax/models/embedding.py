"""An embedding network for metric learning: `bn_cnn`'s trunk with an embedding head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.losses import _checks
from cnnjax.models.classic import BNCNN


class EmbeddingCNN(BNCNN):
  """`BNCNN` whose last Dense is an embedding of ``num_classes`` dimensions, L2-normalised
  when ``normalize`` (FaceNet's embedding layer, Schroff et al. 2015).

  Same fields and parameters as `BNCNN` (67,754 parameters at 10 dimensions on 8x8x1,
  the count of ``bn_cnn`` with 10 classes) plus:

  Attributes:
    normalize: divide each embedding by its Euclidean norm (a zero vector stays zero).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = EmbeddingCNN(num_classes=16)
    >>> x = jnp.ones((2, 8, 8, 1))
    >>> variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), x, train=False)
    >>> e = jax.jit(model.apply, static_argnames="train")(variables, x, train=False)
    >>> e.shape, [round(float(n), 4) for n in jnp.linalg.norm(e, axis=-1)]
    ((2, 16), [1.0, 1.0])
  """
  normalize: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images [N, H, W, C] to embeddings [N, num_classes] (float32)."""
    e = super().__call__(x, train=train)
    if not self.normalize:
      return e
    return e / jnp.maximum(_checks.safe_norm(e, 2, axis=-1), 1e-12)[:, None]
