"""Tests of cnnjax.data.augment; references are numpy slicing and scipy.ndimage."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage as scipy_ndimage

from cnnjax.data import augment
from cnnjax import config as config_lib


def augment_config(**overrides):
  c = config_lib.get_config().augment
  for key, value in overrides.items():
    c[key] = value
  return c


@pytest.fixture(scope="module")
def images():
  # Values in [0.1, 1] so that zeros in the output come only from padding / cutout.
  rng = np.random.default_rng(0)
  return rng.uniform(0.1, 1.0, (16, 7, 9, 3)).astype(np.float32)


def test_everything_off_is_identity(images):
  x = jnp.asarray(images)
  assert augment.augment_batch(jax.random.key(0), x, augment_config()) is x


def test_crop_is_a_shift_of_the_zero_padded_image(images):
  p = 2
  out = np.asarray(augment.random_crop(jax.random.key(1), jnp.asarray(images), p))
  assert out.shape == images.shape
  padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
  h, w = images.shape[1:3]
  offsets = set()
  for i in range(len(images)):
    matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
               if np.array_equal(out[i], padded[i, dy:dy + h, dx:dx + w])]
    assert matches, f"example {i} is not a crop of its padded image"
    offsets.add(matches[0])
  assert len(offsets) > 1  # Offsets are drawn per example.


def test_flip_is_mirror_or_identity_per_example(images):
  out = np.asarray(augment.random_flip(jax.random.key(2), jnp.asarray(images)))
  flipped = images[:, :, ::-1]
  was_flipped = []
  for i in range(len(images)):
    if np.array_equal(out[i], flipped[i]):
      was_flipped.append(True)
    else:
      np.testing.assert_array_equal(out[i], images[i])
      was_flipped.append(False)
  assert any(was_flipped) and not all(was_flipped)


def test_affine_identity_and_rot90(images):
  square = jnp.asarray(images[:, :7, :7])
  b = square.shape[0]
  same = augment.affine_transform(square, jnp.zeros(b), jnp.ones(b))
  np.testing.assert_allclose(same, square, atol=1e-6)
  turned = augment.affine_transform(square, jnp.full(b, np.pi / 2), jnp.ones(b))
  np.testing.assert_allclose(turned, np.rot90(images[:, :7, :7], axes=(1, 2)), atol=1e-5)


def test_affine_matches_scipy_bilinear(images):
  angles = np.array([0.3, -0.2], np.float32)
  scales = np.array([1.2, 0.85], np.float32)
  out = np.asarray(augment.affine_transform(jnp.asarray(images[:2]), jnp.asarray(angles),
                                            jnp.asarray(scales)))
  h, w = images.shape[1:3]
  center = np.array([(h - 1) / 2, (w - 1) / 2])
  for i in range(2):
    c, s = np.cos(angles[i]) / scales[i], np.sin(angles[i]) / scales[i]
    matrix = np.array([[c, s], [-s, c]])
    for ch in range(3):
      # scipy: output[o] = input[matrix @ o + offset], order=1 is bilinear;
      # "grid-constant" blends with the zeros outside the image, as jax's "constant" does.
      ref = scipy_ndimage.affine_transform(images[i, :, :, ch].astype(np.float64), matrix,
                                           offset=center - matrix @ center, order=1,
                                           mode="grid-constant", cval=0.0)
      np.testing.assert_allclose(out[i, :, :, ch], ref, atol=1e-5)


def test_cutout_zeros_one_clipped_square(images):
  size = 3
  out = np.asarray(augment.cutout(jax.random.key(3), jnp.asarray(images), size))
  for i in range(len(images)):
    zero = out[i, :, :, 0] == 0
    assert 0 < zero.sum() <= size * size
    rows, cols = np.nonzero(zero)
    # A full rectangle, at most size x size, zero in every channel.
    box = zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.all() and box.shape[0] <= size and box.shape[1] <= size
    assert np.all(out[i][zero] == 0)
    np.testing.assert_array_equal(out[i][~zero], images[i][~zero])


ALL_ON = dict(crop_padding=2, flip=True, rotation_degrees=15.0, scale=0.1, cutout=3)


def test_same_key_same_output_and_jit_equals_eager(images):
  cfg = augment_config(**ALL_ON)
  x = jnp.asarray(images)
  eager = augment.augment_batch(jax.random.key(4), x, cfg)
  assert eager.shape == x.shape and eager.dtype == x.dtype
  np.testing.assert_array_equal(eager, augment.augment_batch(jax.random.key(4), x, cfg))
  assert not np.array_equal(eager, augment.augment_batch(jax.random.key(5), x, cfg))
  jitted = jax.jit(functools.partial(augment.augment_batch, augment_config=cfg))
  np.testing.assert_allclose(jitted(jax.random.key(4), x), eager, atol=1e-6)


@pytest.mark.parametrize("key,value", [("crop_padding", -1), ("scale", 1.0),
                                       ("rotation_degrees", -5.0), ("cutout", 2.5)])
def test_bad_values_are_named(key, value, images):
  # A plain dict: ConfigDict itself already refuses some wrong types.
  cfg = {**augment_config().to_dict(), key: value}
  with pytest.raises(ValueError, match=f"config.augment.{key}"):
    augment.augment_batch(jax.random.key(0), jnp.asarray(images), cfg)
