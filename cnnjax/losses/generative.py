"""Adversarial (GAN) losses on discriminator outputs, and the R1 gradient penalty.

Three discriminator / generator pairs, each on the raw discriminator output ``D``
(a logit; no sigmoid is applied by the caller):

* non-saturating (`gan_discriminator`, `gan_generator`; Goodfellow et al. 2014): the
  discriminator minimises ``-log sigmoid(D(x)) - log(1 - sigmoid(D(G(z))))`` and the
  generator ``-log sigmoid(D(G(z)))`` instead of the saturating
  ``log(1 - sigmoid(D(G(z))))``, written with ``softplus``, exact for any logit;
* hinge (`gan_hinge_discriminator`, `gan_hinge_generator`; Lim & Ye 2017, Miyato et
  al. 2018): ``max(0, 1 - D(x)) + max(0, 1 + D(G(z)))`` and ``-D(G(z))``;
* least squares (`lsgan_discriminator`, `lsgan_generator`; Mao et al. 2017, with the
  0-1 coding a = 0, b = c = 1): ``((D(x) - 1)^2 + D(G(z))^2) / 2`` and
  ``(D(G(z)) - 1)^2 / 2``.

`r1_penalty` is ``gamma / 2 * ||grad_x D(x)||^2`` on real data (Mescheder et al.
2018), given the gradients; the train step computes them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cnnjax.losses import _checks


def _real_fake(predictions, targets, fn: str) -> tuple[jax.Array, jax.Array]:
  """Validates a ``(real, fake)`` pair of equal-shape floating arrays."""
  if not isinstance(predictions, (tuple, list)) or len(predictions) != 2:
    raise TypeError(f"{fn}: predictions must be a (real_logits, fake_logits) pair, "
                    f"got {type(predictions).__name__}")
  if targets is not None:
    raise ValueError(f"{fn}: targets must be None (the pair's order gives real/fake)")
  real, fake = _checks.floats(predictions[0], predictions[1], fn,
                              names=("real_logits", "fake_logits"))
  _checks.check_float(_checks.as_array(predictions[1], "fake_logits", fn), "fake_logits", fn)
  return real, fake


def _fake(predictions, targets, fn: str) -> jax.Array:
  """Validates the ``[batch, ...]`` discriminator outputs on generated samples."""
  if targets is not None:
    raise ValueError(f"{fn}: targets must be None (all samples are generated)")
  fake = _checks.as_array(predictions, "predictions", fn)
  _checks.check_float(fake, "predictions", fn)
  _checks.check_batched(fake, "predictions", fn)
  return fake


def gan_discriminator(predictions: tuple[jax.Array, jax.Array], targets: None = None, *,
                      label_smoothing: float = 0.0) -> jax.Array:
  """Discriminator loss ``BCE(real, 1 - a) + BCE(fake, 0)`` from logits.

  Equals ``softplus(-r) + softplus(f)`` without smoothing. One-sided label
  smoothing ``a`` (Salimans et al.) lowers only the real targets to ``1 - a``.

  Args:
    predictions: ``(real_logits, fake_logits)``, each ``[batch, ...]`` (a patch
      discriminator's map is averaged over its non-batch axes).
    targets: unused (the pair's order gives real/fake); must be None.
    label_smoothing: one-sided smoothing ``a`` in [0, 1) of the real targets.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> gan_discriminator((jnp.array([0.0]), jnp.array([0.0])))
    Array([1.3862944], dtype=float32)

  References:
    Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014; Salimans et
    al., "Improved Techniques for Training GANs", NeurIPS 2016.
  """
  fn = "gan_discriminator"
  real, fake = _real_fake(predictions, targets, fn)
  _checks.check_fraction(label_smoothing, "label_smoothing", fn, upper_open=True)
  real_target = 1.0 - label_smoothing
  # BCE(x, t) = t softplus(-x) + (1 - t) softplus(x).
  real_loss = real_target * jax.nn.softplus(-real) + (1.0 - real_target) * jax.nn.softplus(real)
  fake_loss = jax.nn.softplus(fake)
  return _checks.mean_per_example(real_loss + fake_loss)


def gan_generator(predictions: jax.Array, targets: None = None) -> jax.Array:
  """Non-saturating generator loss ``-log D(G(z)) = softplus(-fake_logits)``.

  Args:
    predictions: ``[batch, ...]`` discriminator logits on generated samples.
    targets: unused; must be None.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> gan_generator(jnp.array([0.0, 100.0]))
    Array([0.6931472, 0.       ], dtype=float32)

  References:
    Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014, section 3.
  """
  fake = _fake(predictions, targets, "gan_generator")
  return _checks.mean_per_example(jax.nn.softplus(-fake))


def gan_hinge_discriminator(predictions: tuple[jax.Array, jax.Array],
                            targets: None = None) -> jax.Array:
  """Hinge discriminator loss ``max(0, 1 - D(x)) + max(0, 1 + D(G(z)))``.

  Args:
    predictions: ``(real_outputs, fake_outputs)``, each ``[batch, ...]`` raw
      discriminator outputs (non-batch axes are averaged).
    targets: unused; must be None.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> gan_hinge_discriminator((jnp.array([0.5, 2.0]), jnp.array([-0.25, 1.0])))
    Array([1.25, 2.  ], dtype=float32)

  References:
    Lim & Ye, "Geometric GAN", arXiv:1705.02894, 2017; Miyato et al., "Spectral
    Normalization for Generative Adversarial Networks", ICLR 2018, eq. 17.
  """
  real, fake = _real_fake(predictions, targets, "gan_hinge_discriminator")
  return _checks.mean_per_example(jax.nn.relu(1.0 - real) + jax.nn.relu(1.0 + fake))


def gan_hinge_generator(predictions: jax.Array, targets: None = None) -> jax.Array:
  """Hinge generator loss ``-D(G(z))``.

  Args:
    predictions: ``[batch, ...]`` raw discriminator outputs on generated samples.
    targets: unused; must be None.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> gan_hinge_generator(jnp.array([0.5, -2.0]))
    Array([-0.5,  2. ], dtype=float32)

  References:
    Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR
    2018, eq. 17.
  """
  fake = _fake(predictions, targets, "gan_hinge_generator")
  return _checks.mean_per_example(-fake)


def lsgan_discriminator(predictions: tuple[jax.Array, jax.Array],
                        targets: None = None) -> jax.Array:
  """Least-squares discriminator loss ``((D(x) - 1)^2 + D(G(z))^2) / 2`` (a=0, b=1).

  Args:
    predictions: ``(real_outputs, fake_outputs)``, each ``[batch, ...]`` raw
      discriminator outputs (non-batch axes are averaged).
    targets: unused; must be None.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> lsgan_discriminator((jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])))
    Array([0. , 2.5], dtype=float32)

  References:
    Mao et al., "Least Squares Generative Adversarial Networks", ICCV 2017, eq. 2
    with the 0-1 binary coding of section 3.2.3.
  """
  real, fake = _real_fake(predictions, targets, "lsgan_discriminator")
  return _checks.mean_per_example(0.5 * jnp.square(real - 1.0) + 0.5 * jnp.square(fake))


def lsgan_generator(predictions: jax.Array, targets: None = None) -> jax.Array:
  """Least-squares generator loss ``(D(G(z)) - 1)^2 / 2`` (c=1).

  Args:
    predictions: ``[batch, ...]`` raw discriminator outputs on generated samples.
    targets: unused; must be None.

  Returns:
    ``[batch]`` per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> lsgan_generator(jnp.array([1.0, -1.0]))
    Array([0., 2.], dtype=float32)

  References:
    Mao et al., "Least Squares Generative Adversarial Networks", ICCV 2017, eq. 2.
  """
  fake = _fake(predictions, targets, "lsgan_generator")
  return _checks.mean_per_example(0.5 * jnp.square(fake - 1.0))


def r1_penalty(predictions: jax.Array, targets: None = None, *,
               gamma: float = 10.0) -> jax.Array:
  """R1 gradient penalty ``gamma / 2 * ||grad_x D(x)||^2`` on real examples.

  Added to the discriminator loss, it penalises the discriminator's gradient on
  real data only, which makes simultaneous gradient descent converge locally for
  any GAN loss (Mescheder et al., Theorem 4.1).

  Args:
    predictions: ``[batch, ...]`` gradients of the discriminator's output with
      respect to each real input (e.g. ``[batch, H, W, C]``).
    targets: unused; must be None.
    gamma: the weight (the paper's gamma; >= 0).

  Returns:
    ``[batch]`` per-example penalty (sum of squares over the non-batch axes).

  Examples:
    >>> import jax.numpy as jnp
    >>> r1_penalty(jnp.array([[3.0, 4.0], [0.0, 1.0]]), gamma=2.0)
    Array([25.,  1.], dtype=float32)

  References:
    Mescheder, Geiger & Nowozin, "Which Training Methods for GANs do actually
    Converge?", ICML 2018, eq. 9.
  """
  fn = "r1_penalty"
  if targets is not None:
    raise ValueError(f"{fn}: targets must be None (the gradients are the input)")
  g = _checks.as_array(predictions, "predictions", fn)
  _checks.check_float(g, "predictions", fn)
  _checks.check_batched(g, "predictions", fn)
  if isinstance(gamma, (int, float)) and gamma < 0:
    raise ValueError(f"{fn}: gamma={gamma} must be >= 0")
  return 0.5 * gamma * _checks.sum_per_example(jnp.square(g))
