"""Data augmentation: pure, jittable jax functions of an explicit key.

Every function takes a batch ``images: float32 [B, H, W, C]`` and draws one
independent transformation per example. `augment_batch` applies the ones the
``config.augment`` section switches on, in this order: rotation/scale, crop,
flip, cutout. With everything off it returns its input unchanged.

Flips are allowed for every dataset; the shipped configs keep them off for
digits, MNIST and SVHN, whose classes are not mirror-symmetric
(`cnnjax.data.catalog.DatasetInfo.flips_make_sense`).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from cnnjax import config as config_lib
  >>> cfg = config_lib.get_config().augment
  >>> cfg.crop_padding = 2
  >>> out = augment_batch(jax.random.key(0), jnp.ones((4, 8, 8, 1)), cfg)
  >>> out.shape
  (4, 8, 8, 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

AUGMENT_KEYS = ("crop_padding", "flip", "rotation_degrees", "scale", "cutout")


def random_crop(rng: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Zero-pads by ``padding`` pixels on each side and crops back to ``H x W`` at
  a random place: a random shift of each image by ``-padding .. padding`` pixels
  in both directions, the uncovered border filled with zeros.

  Args:
    rng: a PRNG key.
    images: ``[B, H, W, C]``.
    padding: non-negative Python int.

  Returns:
    ``[B, H, W, C]``, same dtype.
  """
  if padding == 0:
    return images
  b, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(rng, (b, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors each image left-right (``x[:, ::-1]`` per image) with probability 1/2.

  Args:
    rng: a PRNG key.
    images: ``[B, H, W, C]``.

  Returns:
    ``[B, H, W, C]``.
  """
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def affine_transform(images: jax.Array, angles: jax.Array, scales: jax.Array) -> jax.Array:
  """Rotates each image by ``angles[i]`` radians and zooms it by ``scales[i]``
  about its center, with bilinear interpolation and zeros outside.

  Output pixel ``p`` (row, column) takes the input at
  ``c + M(angle) (p - c) / scale`` where ``c = ((H-1)/2, (W-1)/2)`` and
  ``M(a) = [[cos a, sin a], [-sin a, cos a]]``: a positive angle turns the
  content counter-clockwise as displayed (``angle = pi/2`` equals
  ``np.rot90`` on square images); ``scale > 1`` zooms in.

  Args:
    images: ``[B, H, W, C]``.
    angles: ``[B]`` radians.
    scales: ``[B]`` positive zoom factors.

  Returns:
    ``[B, H, W, C]``.
  """
  _, h, w, _ = images.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy,
                            jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")

  def one(image, angle, scale):
    cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
    src = (cy + cos * rows + sin * cols, cx - sin * rows + cos * cols)
    per_channel = lambda ch: ndimage.map_coordinates(ch, src, order=1, mode="constant", cval=0.0)
    return jax.vmap(per_channel, in_axes=2, out_axes=2)(image)

  return jax.vmap(one)(images, angles.astype(jnp.float32), scales.astype(jnp.float32))


def random_rotate_scale(rng: jax.Array, images: jax.Array, rotation_degrees: float,
                        scale: float) -> jax.Array:
  """`affine_transform` with angle ~ U[-d, d] degrees and zoom ~ U[1 - s, 1 + s]."""
  b = images.shape[0]
  angle_rng, scale_rng = jax.random.split(rng)
  limit = math.radians(rotation_degrees)
  angles = jax.random.uniform(angle_rng, (b,), minval=-limit, maxval=limit)
  scales = jax.random.uniform(scale_rng, (b,), minval=1.0 - scale, maxval=1.0 + scale)
  return affine_transform(images, angles, scales)


def cutout(rng: jax.Array, images: jax.Array, size: int) -> jax.Array:
  """Zeros a ``size x size`` square per image, centred on a uniformly random
  pixel and clipped at the borders (DeVries & Taylor, 2017, arXiv:1708.04552).

  Args:
    rng: a PRNG key.
    images: ``[B, H, W, C]``.
    size: side of the square in pixels, a non-negative Python int.

  Returns:
    ``[B, H, W, C]``.
  """
  if size == 0:
    return images
  b, h, w, _ = images.shape
  y_rng, x_rng = jax.random.split(rng)
  top = jax.random.randint(y_rng, (b, 1, 1, 1), 0, h) - size // 2
  left = jax.random.randint(x_rng, (b, 1, 1, 1), 0, w) - size // 2
  rows = jnp.arange(h).reshape(1, h, 1, 1)
  cols = jnp.arange(w).reshape(1, 1, w, 1)
  inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
  return jnp.where(inside, jnp.zeros_like(images), images)


def _read_config(config: Mapping[str, Any] | Any) -> dict[str, Any]:
  values = {}
  for key in AUGMENT_KEYS:
    try:
      values[key] = config[key]
    except (KeyError, AttributeError) as e:
      raise ValueError(f"augment config has no key {key!r}; expected keys "
                       f"{list(AUGMENT_KEYS)}") from e
  checks = {
      "crop_padding": isinstance(values["crop_padding"], int) and values["crop_padding"] >= 0,
      "flip": isinstance(values["flip"], bool),
      "rotation_degrees": isinstance(values["rotation_degrees"], (int, float))
                          and 0 <= values["rotation_degrees"] <= 180,
      "scale": isinstance(values["scale"], (int, float)) and 0 <= values["scale"] < 1,
      "cutout": isinstance(values["cutout"], int) and values["cutout"] >= 0,
  }
  accepted = {
      "crop_padding": "an int >= 0", "flip": "True or False",
      "rotation_degrees": "a number in [0, 180]", "scale": "a number in [0, 1)",
      "cutout": "an int >= 0",
  }
  for key, ok in checks.items():
    if not ok:
      raise ValueError(f"config.augment.{key}={values[key]!r} is invalid; expected "
                       f"{accepted[key]}")
  return values


def is_identity(augment_config: Mapping[str, Any] | Any) -> bool:
  """True when ``augment_config`` switches every augmentation off."""
  v = _read_config(augment_config)
  return not (v["crop_padding"] or v["flip"] or v["rotation_degrees"] or v["scale"]
              or v["cutout"])


def augment_batch(rng: jax.Array, images: jax.Array,
                  augment_config: Mapping[str, Any] | Any) -> jax.Array:
  """Applies the augmentations ``augment_config`` (``config.augment``) switches on.

  Args:
    rng: a PRNG key; the same key gives the same output.
    images: float ``[B, H, W, C]``.
    augment_config: a mapping with ``crop_padding``, ``flip``,
      ``rotation_degrees``, ``scale`` and ``cutout`` (see
      experiments/configs/base.py). Read as Python values, so close over it
      when jitting.

  Returns:
    ``[B, H, W, C]``; ``images`` itself when everything is off.
  """
  v = _read_config(augment_config)
  if is_identity(augment_config):
    return images
  affine_rng, crop_rng, flip_rng, cutout_rng = jax.random.split(rng, 4)
  if v["rotation_degrees"] or v["scale"]:
    images = random_rotate_scale(affine_rng, images, float(v["rotation_degrees"]),
                                 float(v["scale"]))
  images = random_crop(crop_rng, images, v["crop_padding"])
  if v["flip"]:
    images = random_flip(flip_rng, images)
  return cutout(cutout_rng, images, v["cutout"])


def per_example_fn(augment_config) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
  """``(key, image [H, W, C]) -> image`` for the train step, or None when augmentation is off.

  The step draws one key per example (from its index in the global batch), so
  the same example gets the same augmentation on any number of devices.
  """
  if is_identity(augment_config):
    return None
  return lambda key, image: augment_batch(key, image[None], augment_config)[0]
