"""The losses of the scene tasks: IoU / GIoU, per-pixel segmentation losses, and the task
losses built from them.

References: hand calculations (stated next to each number) and float64 numpy
re-derivations written from the papers' formulas (Rezatofighi et al. 2019, Algorithm 1
for GIoU; Milletari et al. 2016 / Salehi et al. 2017 for Dice and Tversky, per class as
nnU-Net; Lin et al. 2017 / Keras for focal), not from the code under test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax.losses as L
from cnnjax import config as config_lib
from cnnjax import tasks
from cnnjax.data import catalog

RNG = np.random.default_rng(0)


# --- IoU and GIoU ---------------------------------------------------------------------

def np_giou_terms(p, t):
  """Algorithm 1 of Rezatofighi et al. 2019 in float64, boxes (y0, x0, y1, x1)."""
  p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
  py0, py1 = np.minimum(p[..., 0], p[..., 2]), np.maximum(p[..., 0], p[..., 2])
  px0, px1 = np.minimum(p[..., 1], p[..., 3]), np.maximum(p[..., 1], p[..., 3])
  ty0, tx0, ty1, tx1 = np.moveaxis(t, -1, 0)
  area_p, area_t = (py1 - py0) * (px1 - px0), (ty1 - ty0) * (tx1 - tx0)
  ih = np.clip(np.minimum(py1, ty1) - np.maximum(py0, ty0), 0, None)
  iw = np.clip(np.minimum(px1, tx1) - np.maximum(px0, tx0), 0, None)
  inter = ih * iw
  union = area_p + area_t - inter
  enclosing = ((np.maximum(py1, ty1) - np.minimum(py0, ty0))
               * (np.maximum(px1, tx1) - np.minimum(px0, tx0)))
  iou = inter / union
  return iou, iou - (enclosing - union) / enclosing


# (predicted, target, IoU, GIoU) worked out by hand.
HAND = [
    # Identical: IoU 1, enclosing = union.
    ([0, 0, 2, 2], [0, 0, 2, 2], 1.0, 1.0),
    # Offset by (1, 1): intersection 1, union 4 + 4 - 1 = 7, enclosing 3 x 3 = 9.
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1 / 7 - 2 / 9),
    # Nested 1x1 in 2x2: IoU 1/4, enclosing = the 2x2 box = union.
    ([0, 0, 1, 1], [0, 0, 2, 2], 0.25, 0.25),
    # Disjoint side by side with a gap of 1: union 2, enclosing 1 x 3 = 3.
    ([0, 0, 1, 1], [0, 2, 1, 3], 0.0, -1 / 3),
    # Corners given crossed (y1 < y0, x1 < x0) are put in order first: same as row 2.
    ([2, 2, 0, 0], [1, 1, 3, 3], 1 / 7, 1 / 7 - 2 / 9),
]


def test_iou_and_giou_by_hand():
  p = jnp.asarray([row[0] for row in HAND], jnp.float32)
  t = jnp.asarray([row[1] for row in HAND], jnp.float32)
  both = jax.jit(lambda p, t: (L.iou(p, t), L.giou(p, t)))
  iou, giou = both(p, t)
  np.testing.assert_allclose(iou, [1 - row[2] for row in HAND], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(giou, [1 - row[3] for row in HAND], rtol=1e-6, atol=1e-7)
  # jit equals eager.
  np.testing.assert_allclose(L.giou(p, t), giou, rtol=1e-6)


def test_iou_and_giou_match_numpy_algorithm_on_random_boxes():
  """[B, 3, 4] boxes, some with crossed corners: mean over the 3 boxes of each example."""
  p = RNG.uniform(0, 10, (6, 3, 4))
  corner, size = RNG.uniform(0, 8, (6, 3, 2)), RNG.uniform(0.5, 4, (6, 3, 2))
  t = np.concatenate([corner, corner + size], -1)
  iou, giou = np_giou_terms(p, t)
  ours = jax.jit(lambda p, t: (L.iou(p, t, eps=0.0), L.giou(p, t, eps=0.0)))(
      p.astype(np.float32), t.astype(np.float32))
  np.testing.assert_allclose(ours[0], (1 - iou).mean(1), rtol=1e-5)
  np.testing.assert_allclose(ours[1], (1 - giou).mean(1), rtol=1e-5)
  # GIoU <= IoU always (the enclosing term is >= 0), so its loss is never smaller.
  assert np.all(np.asarray(ours[1]) >= np.asarray(ours[0]) - 1e-6)


def test_box_losses_have_finite_gradients_where_boxes_degenerate():
  # Rows: disjoint, an empty predicted box, both the same point, crossed corners on a line.
  p = jnp.asarray([[0, 0, 1, 1], [2, 2, 2, 2], [1, 1, 1, 1], [3, 0, 3, 2]], jnp.float32)
  t = jnp.asarray([[0, 5, 1, 6], [0, 0, 4, 4], [1, 1, 1, 1], [0, 0, 4, 4]], jnp.float32)
  grads = jax.jit(lambda p, t: [jax.value_and_grad(lambda q: jnp.sum(loss(q, t)))(p)
                                for loss in (L.iou, L.giou)])
  (iou, g_iou), (giou, g_giou) = grads(p, t)
  assert np.isfinite([iou, giou]).all() and np.isfinite(g_iou).all() and np.isfinite(g_giou).all()
  # Disjoint boxes (row 0): the IoU loss is flat (no gradient), GIoU pulls the prediction
  # over: increasing x1 (towards the target) lowers it.
  assert not np.any(g_iou[0]) and g_giou[0, 3] < 0


def test_box_losses_check_shapes():
  with pytest.raises(ValueError, match=r"\[batch, \.\.\., 4\]"):
    jax.eval_shape(L.iou, jnp.zeros((2, 3)), jnp.zeros((2, 3)))


# --- per-pixel losses -------------------------------------------------------------------

B, H, W, C = 3, 4, 5, 4
LOGITS = RNG.normal(size=(B, H, W, C)).astype(np.float32) * 2
LABELS = RNG.integers(0, C, (B, H, W)).astype(np.int32)
IGNORED = np.where(RNG.random((B, H, W)) < 0.25, 255, LABELS).astype(np.int32)


def np_softmax(x):
  e = np.exp(np.asarray(x, np.float64) - np.max(x, -1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_maps(logits, labels, valid):
  """Per-class probability and one-hot maps, zero at ignored pixels."""
  p = np_softmax(logits) * valid[..., None]
  return p, np.eye(C)[np.where(valid, labels, 0)] * valid[..., None]


def np_per_class_tversky(logits, labels, valid, alpha, beta, smooth):
  """Salehi et al.: mean_c [1 - (TP + s) / (TP + alpha FP + beta FN + s)], alpha on FP."""
  p, t = np_maps(logits, labels, valid)
  tp, fp, fn = (p * t).sum((1, 2)), (p * (1 - t)).sum((1, 2)), ((1 - p) * t).sum((1, 2))
  return (1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)).mean(-1)


def np_per_class_dice(logits, labels, valid, smooth):
  """Milletari et al., per class: mean_c [1 - (2 sum p t + s) / (sum p + sum t + s)]."""
  p, t = np_maps(logits, labels, valid)
  return (1 - (2 * (p * t).sum((1, 2)) + smooth)
          / (p.sum((1, 2)) + t.sum((1, 2)) + smooth)).mean(-1)


def np_pixel_mean(per_pixel, valid):
  return (per_pixel * valid).reshape(B, -1).sum(1) / valid.reshape(B, -1).sum(1)


@pytest.mark.parametrize("labels", [LABELS, IGNORED], ids=["all_pixels", "ignore_index_255"])
def test_segmentation_losses_match_numpy(labels):
  valid = labels != 255
  options = {"ignore_index": 255} if (labels == 255).any() else {}
  p = np_softmax(LOGITS)
  safe = np.where(valid, labels, 0)
  p_true = np.take_along_axis(p, safe[..., None], -1)[..., 0]
  ce = np_pixel_mean(-np.log(p_true), valid)
  # Keras CategoricalFocalCrossentropy(alpha=0.25, gamma=2), per pixel.
  focal = np_pixel_mean(-0.25 * (1 - p_true) ** 2 * np.log(p_true), valid)
  dice = np_per_class_dice(LOGITS, labels, valid, 1.0)
  tversky = np_per_class_tversky(LOGITS, labels, valid, 0.3, 0.7, 1.0)
  want = {"sparse_categorical_cross_entropy": ({}, ce), "focal": ({}, focal),
          "dice": ({}, dice), "tversky": ({"alpha": 0.3, "beta": 0.7}, tversky),
          "dice_cross_entropy": ({"dice_weight": 2.0}, 2 * dice + ce)}
  fns = {name: L.for_segmentation(name, num_classes=C, **options, **extra)
         for name, (extra, _) in want.items()}
  got = jax.jit(lambda x, y: {name: fn(x, y) for name, fn in fns.items()})(LOGITS, labels)
  for name, (_, expected) in want.items():
    np.testing.assert_allclose(got[name], expected, rtol=2e-5, err_msg=name)


def test_ignored_pixels_equal_leaving_them_out():
  """An example whose ignored pixels are cut away gives the same loss (mask = slicing)."""
  labels = np.full((1, 2, 4), 255, np.int32)
  labels[0, :, :2] = LABELS[0, :2, :2]
  names = L.segmentation_names()
  masked = {n: L.for_segmentation(n, num_classes=C, ignore_index=255) for n in names}
  plain = {n: L.for_segmentation(n, num_classes=C) for n in names}
  full, cut = jax.jit(lambda x, y, xs, ys: ({n: f(x, y) for n, f in masked.items()},
                                            {n: f(xs, ys) for n, f in plain.items()}))(
      LOGITS[:1, :2, :4], labels, LOGITS[:1, :2, :2], labels[:, :, :2])
  for name in names:
    np.testing.assert_allclose(full[name], cut[name], rtol=1e-5, err_msg=name)


def test_global_dice_on_softmax_is_mean_one_minus_p_true():
  """Why the segmentation Dice is per class: over all channels at once, softmax outputs
  make sum(p) + sum(t) = 2 x pixels, so the global Dice is the mean of 1 - p_true."""
  p = jax.nn.softmax(LOGITS)
  t = jax.nn.one_hot(LABELS, C)
  p_true = np.take_along_axis(np_softmax(LOGITS), LABELS[..., None], -1)[..., 0]
  global_dice = jax.jit(lambda p, t: L.dice(p, t, from_logits=False, smooth=0.0))
  np.testing.assert_allclose(global_dice(p, t), (1 - p_true).reshape(B, -1).mean(1), rtol=1e-5)


def test_segmentation_losses_finite_gradients_at_extreme_logits():
  extreme = jnp.asarray(np.sign(LOGITS) * 1e4)
  fns = {n: L.for_segmentation(n, num_classes=C, ignore_index=255)
         for n in L.segmentation_names()}
  grads = jax.jit(lambda x: {n: jax.grad(lambda z: jnp.sum(f(z, IGNORED)))(x)
                             for n, f in fns.items()})(extreme)
  for name, g in grads.items():
    assert np.all(np.isfinite(g)), name


def test_segmentation_loss_errors_are_one_line():
  with pytest.raises(ValueError, match=r"'huber' does not fit per-pixel .*\[dice, "):
    L.for_segmentation("huber", num_classes=C)
  with pytest.raises(ValueError, match=r"loss.margin is not an option of tversky; accepted: "
                                       r"\[alpha, beta, ignore_index, smooth\]"):
    L.for_segmentation("tversky", num_classes=C, margin=1.0)
  with pytest.raises(ValueError, match=r"\[batch, \.\.\., 4\] per pixel"):
    jax.eval_shape(L.for_segmentation("dice", num_classes=C), jnp.zeros((2, 3, 3, 5)),
                   jnp.zeros((2, 3, 3), jnp.int32))


# --- the task losses --------------------------------------------------------------------

def loss_config(name, **options):
  section = config_lib.get_config().loss
  section.name = name
  for k, v in options.items():
    section[k] = v
  return section


def test_localization_loss_is_box_loss_in_pixels_plus_weighted_ce():
  task = tasks.get_task("localization", catalog.dataset_info("digit_scenes_single"))
  outputs = np.zeros((2, 14), np.float32)
  # Box outputs are centre and size fractions through a sigmoid. Example 0: centre (16, 24),
  # size (16, 24), the box (8, 12, 24, 36) on the 32x48 canvas. Example 1: sizes sigmoid(-40),
  # an empty box at the centre.
  outputs[1, 2:4] = -40.0
  outputs[1, 4 + 3] = 10.0                      # and class 3 very likely
  batch = {"box": jnp.asarray([[8, 12, 24, 36], [8, 12, 24, 36]], jnp.float32),
           "label": jnp.asarray([3, 3])}
  ce = -np.log(np_softmax(outputs[:, 4:])[:, 3])
  # Example 0: exact box, uniform class logits; example 1: the empty box (16, 24, 16, 24),
  # all 4 edges off by 8 or 12 px (squared errors 64, 144, 64, 144: mean 104).
  mse_fn = task.make_loss(loss_config("mse", class_loss_weight=0.5))
  giou_fn = task.make_loss(loss_config("giou"))
  mse, giou = jax.jit(lambda o, b: (mse_fn(o, b), giou_fn(o, b)))(jnp.asarray(outputs), batch)
  np.testing.assert_allclose(mse, [0.5 * ce[0], 104 + 0.5 * ce[1]], rtol=1e-5)
  # Empty box at (16, 24): IoU 0, enclosing = the target, so GIoU = 0 - 0 = 0, loss 1.
  np.testing.assert_allclose(giou, [ce[0], 1 + ce[1]], rtol=1e-5)
  with pytest.raises(ValueError, match=r"'dice' does not fit task 'localization'.*giou"):
    task.make_loss(loss_config("dice"))
  with pytest.raises(ValueError, match=r"class_loss_weight=-1.0"):
    task.make_loss(loss_config("giou", class_loss_weight=-1.0))


def test_sequence_losses_average_over_digits_and_the_end():
  task = tasks.get_task("sequence", catalog.dataset_info("digit_scenes"))
  logits = RNG.normal(size=(2, 3, 11)).astype(np.float32)
  batch = {"digits": jnp.asarray([[4, 2, 0], [7, 1, 5]]),
           "digit_mask": jnp.asarray([[1, 1, 0], [1, 1, 1]], jnp.uint8)}
  log_p = np.log(np_softmax(logits))
  # Example 0 reads 4, 2, END (3 positions); example 1 reads 7, 1, 5 (no END fits).
  want = [-(log_p[0, 0, 4] + log_p[0, 1, 2] + log_p[0, 2, 10]) / 3,
          -(log_p[1, 0, 7] + log_p[1, 1, 1] + log_p[1, 2, 5]) / 3]
  fn = task.make_loss(loss_config("sequence_cross_entropy"))
  np.testing.assert_allclose(jax.jit(fn)(jnp.asarray(logits.reshape(2, 33)), batch), want,
                             rtol=1e-5)
  short = {"digits": jnp.asarray([[6, 0, 0]]), "digit_mask": jnp.asarray([[1, 0, 0]], jnp.uint8)}
  p = np_softmax(logits[:1])
  # Keras's focal: alpha 0.25 (an unset option keeps the loss's default), gamma 2.
  focal = -0.25 * ((1 - p[0, 0, 6]) ** 2 * np.log(p[0, 0, 6])
                   + (1 - p[0, 1, 10]) ** 2 * np.log(p[0, 1, 10]))
  fn = task.make_loss(loss_config("focal", gamma=2.0))
  np.testing.assert_allclose(jax.jit(fn)(jnp.asarray(logits[:1].reshape(1, 33)), short),
                             [focal / 2], rtol=1e-5)
  with pytest.raises(ValueError, match=r"'huber' does not fit task 'sequence'"):
    task.make_loss(loss_config("huber"))


def test_config_refuses_losses_models_and_augmentation_that_do_not_fit():
  c = config_lib.get_config()
  c.task, c.dataset, c.model = "segmentation", "digit_scenes", "unet_small"
  c.loss.name = "binary_cross_entropy"
  with pytest.raises(ValueError, match=r"does not fit per-pixel.*sparse_categorical"):
    config_lib.validate(c)
  c.loss.name, c.model = "dice", "bn_cnn"
  with pytest.raises(ValueError, match=r"model='bn_cnn' gives one output vector.*'unet_small'"):
    config_lib.validate(c)
  c.model, c.augment.flip = "unet_small", True
  with pytest.raises(ValueError, match=r"augment.flip=True: augmentation moves only the image"):
    config_lib.validate(c)
  c.task, c.augment.flip = "sequence", False
  with pytest.raises(ValueError, match=r"model='unet_small' gives per-pixel logits"):
    config_lib.validate(c)
