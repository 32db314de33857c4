"""Adversarial (GAN) losses on discriminator logits.

The standard GAN of Goodfellow et al. with the generator's non-saturating loss:
the discriminator minimises ``-log D(x) - log(1 - D(G(z)))`` and the generator
``-log D(G(z))`` (instead of the saturating ``log(1 - D(G(z)))``). Both are written
with ``softplus`` on logits, exact for any logit.
"""

from __future__ import annotations

import jax

from cnnjax.losses import _checks


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
  if not isinstance(predictions, (tuple, list)) or len(predictions) != 2:
    raise TypeError(f"{fn}: predictions must be a (real_logits, fake_logits) pair, "
                    f"got {type(predictions).__name__}")
  if targets is not None:
    raise ValueError(f"{fn}: targets must be None (the pair's order gives real/fake)")
  real, fake = _checks.floats(predictions[0], predictions[1], fn,
                              names=("real_logits", "fake_logits"))
  _checks.check_float(_checks.as_array(predictions[1], "fake_logits", fn), "fake_logits", fn)
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
  fn = "gan_generator"
  if targets is not None:
    raise ValueError(f"{fn}: targets must be None (all samples are generated)")
  fake = _checks.as_array(predictions, "predictions", fn)
  _checks.check_float(fake, "predictions", fn)
  _checks.check_batched(fake, "predictions", fn)
  return _checks.mean_per_example(jax.nn.softplus(-fake))
