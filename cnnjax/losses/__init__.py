"""Per-example loss functions, a name registry and the one reduction helper.

Every loss is a pure function ``name(predictions, targets, *, **options)``
returning one value per example (``[batch]``); the caller reduces with `reduce`.

    >>> import jax.numpy as jnp
    >>> import cnnjax.losses as L
    >>> per_example = L.get("cross_entropy")(jnp.zeros((2, 4)), jnp.array([0, 3]))
    >>> L.reduce(per_example)
    Array(1.3862944, dtype=float32)

`for_classification` adapts any loss that can train a classifier to the
``(logits [B, C], integer labels [B])`` pair a training loop has; `for_segmentation`
adapts the dense losses to ``(logits [B, H, W, C], labels [B, H, W])``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from cnnjax.losses import dense as _dense
from cnnjax.losses._checks import names_list as _names_list
from cnnjax.losses.boxes import box_iou, giou, iou
from cnnjax.losses.classification import (
    binary_cross_entropy, binary_focal, categorical_cross_entropy, focal, kl_divergence,
    poly1_cross_entropy, sparse_categorical_cross_entropy, valid_mask)
from cnnjax.losses.calibration import brier, focal_sample_dependent
from cnnjax.losses.generative import gan_discriminator, gan_generator
from cnnjax.losses.imbalance import (
    class_balanced_weights, ldam, ldam_margins, logit_adjusted_cross_entropy)
from cnnjax.losses.generative import (
    gan_discriminator, gan_generator, gan_hinge_discriminator, gan_hinge_generator,
    lsgan_discriminator, lsgan_generator, r1_penalty)
from cnnjax.losses.margin import (
    categorical_hinge, hinge, hinge_embedding, multi_margin, squared_hinge)
from cnnjax.losses.metric_learning import contrastive, supervised_contrastive, triplet_margin
from cnnjax.losses.regression import (
    cosine_similarity, gaussian_nll, huber, log_cosh, mean_absolute_error,
    mean_absolute_percentage_error, mean_squared_error, mean_squared_log_error, poisson,
    smooth_l1)
from cnnjax.losses.robust import (
    bootstrapped_cross_entropy, generalized_cross_entropy, nce_rce, normalized_cross_entropy,
    reverse_cross_entropy, symmetric_cross_entropy)
from cnnjax.losses.segmentation import dice, dice_cross_entropy, tversky
from cnnjax.losses.sequence import sequence_cross_entropy
from cnnjax.losses.square import square_loss

LossFn = Callable[..., jax.Array]
ClassificationLoss = Callable[[jax.Array, jax.Array], jax.Array]
Reduction = Literal["none", "sum", "mean", "weighted_mean"]

_LOSSES: dict[str, LossFn] = {
    f.__name__: f for f in (
        # Regression.
        mean_squared_error, mean_absolute_error, huber, smooth_l1, log_cosh,
        mean_squared_log_error, mean_absolute_percentage_error, poisson, gaussian_nll,
        cosine_similarity,
        # Classification.
        binary_cross_entropy, categorical_cross_entropy, sparse_categorical_cross_entropy,
        kl_divergence, focal, binary_focal, poly1_cross_entropy,
        # Margin.
        hinge, squared_hinge, categorical_hinge, multi_margin, hinge_embedding,
        # Metric learning.
        contrastive, triplet_margin,
        # Dense prediction.
        dice, tversky, dice_cross_entropy,
        # Bounding boxes.
        iou, giou,
        # Sequences.
        sequence_cross_entropy,
        # Generative.
        gan_discriminator, gan_generator,
        # Noisy labels.
        generalized_cross_entropy, reverse_cross_entropy, symmetric_cross_entropy,
        normalized_cross_entropy, nce_rce, bootstrapped_cross_entropy,
        # Long-tailed classes.
        logit_adjusted_cross_entropy, ldam,
        # Calibration.
        focal_sample_dependent, brier,
        # Metric learning on a whole batch; more adversarial losses and the R1 penalty.
        supervised_contrastive,
        gan_hinge_discriminator, gan_hinge_generator, lsgan_discriminator, lsgan_generator,
        r1_penalty,
        # Raw-output square loss (curvature studies).
        square_loss,
    )
}

ALIASES: dict[str, str] = {
    "mse": "mean_squared_error",
    "l2": "mean_squared_error",
    "mae": "mean_absolute_error",
    "l1": "mean_absolute_error",
    "huber_loss": "huber",
    "smooth_l1_loss": "smooth_l1",
    "logcosh": "log_cosh",
    "msle": "mean_squared_log_error",
    "mape": "mean_absolute_percentage_error",
    "poisson_nll": "poisson",
    "gaussian_nll_loss": "gaussian_nll",
    "cosine": "cosine_similarity",
    "bce": "binary_cross_entropy",
    "binary_crossentropy": "binary_cross_entropy",
    "cce": "categorical_cross_entropy",
    "categorical_crossentropy": "categorical_cross_entropy",
    "softmax_cross_entropy": "categorical_cross_entropy",
    "sparse_cce": "sparse_categorical_cross_entropy",
    "sparse_categorical_crossentropy": "sparse_categorical_cross_entropy",
    "cross_entropy": "sparse_categorical_cross_entropy",
    "ce": "sparse_categorical_cross_entropy",
    "nll": "sparse_categorical_cross_entropy",
    "kl": "kl_divergence",
    "kld": "kl_divergence",
    "focal_loss": "focal",
    "categorical_focal": "focal",
    "sigmoid_focal": "binary_focal",
    "sigmoid_focal_loss": "binary_focal",
    "poly1": "poly1_cross_entropy",
    "poly_loss": "poly1_cross_entropy",
    "svm": "hinge",
    "hinge_loss": "hinge",
    "squared_hinge_loss": "squared_hinge",
    "categorical_hinge_loss": "categorical_hinge",
    "multi_margin_loss": "multi_margin",
    "hinge_embedding_loss": "hinge_embedding",
    "contrastive_loss": "contrastive",
    "triplet": "triplet_margin",
    "triplet_margin_loss": "triplet_margin",
    "dice_loss": "dice",
    "tversky_loss": "tversky",
    "dice_ce": "dice_cross_entropy",
    "iou_loss": "iou",
    "giou_loss": "giou",
    "generalized_iou": "giou",
    "sequence_ce": "sequence_cross_entropy",
    "seq_ce": "sequence_cross_entropy",
    "gan_d": "gan_discriminator",
    "gan_g": "gan_generator",
    "gce": "generalized_cross_entropy",
    "rce": "reverse_cross_entropy",
    "sce": "symmetric_cross_entropy",
    "nce": "normalized_cross_entropy",
    "nce+rce": "nce_rce",
    "bootstrap": "bootstrapped_cross_entropy",
    "logit_adjusted": "logit_adjusted_cross_entropy",
    "la_ce": "logit_adjusted_cross_entropy",
    "ldam_loss": "ldam",
    "flsd": "focal_sample_dependent",
    "flsd_53": "focal_sample_dependent",
    "brier_score": "brier",
    "supcon": "supervised_contrastive",
    "gan_hinge_d": "gan_hinge_discriminator",
    "gan_hinge_g": "gan_hinge_generator",
    "lsgan_d": "lsgan_discriminator",
    "lsgan_g": "lsgan_generator",
    "r1": "r1_penalty",
    "square": "square_loss",
}


def names() -> list[str]:
  """The sorted canonical loss names (aliases excluded, see `ALIASES`)."""
  return sorted(_LOSSES)


def canonical_name(name: str) -> str:
  """Resolves an alias or spelling variant (case, '-') to the canonical name.

  Raises:
    ValueError: naming `name` and the valid names if it is unknown.
  """
  if not isinstance(name, str):
    raise TypeError(f"loss name must be a str, got {type(name).__name__}")
  key = name.strip().lower().replace("-", "_").replace(" ", "_")
  key = ALIASES.get(key, key)
  if key not in _LOSSES:
    raise ValueError(f"Unknown loss {name!r}; valid names: {_names_list(names())} "
                     f"(aliases: {_names_list(sorted(ALIASES))})")
  return key


def get(name: str) -> LossFn:
  """The loss function called `name` (a canonical name or an alias).

  Examples:
    >>> get("mse").__name__
    'mean_squared_error'

  Raises:
    ValueError: naming `name` and the valid names if it is unknown.
  """
  return _LOSSES[canonical_name(name)]


_REDUCTIONS = ("none", "sum", "mean", "weighted_mean")


def reduce(per_example: jax.Array, *, weights: jax.Array | None = None,
           reduction: Reduction = "mean") -> jax.Array:
  """Reduces a ``[batch]`` per-example loss to what the caller wants.

  * ``"none"``: ``w * l`` (``[batch]``, `l` when no weights).
  * ``"sum"``: ``sum(w * l)``.
  * ``"mean"``: ``sum(w * l) / batch`` (the plain mean without weights).
  * ``"weighted_mean"``: ``sum(w * l) / max(sum(w), tiny)``; with 0/1 weights the
    mean over the selected examples (0 if none), e.g. `valid_mask` or a padding
    mask for the last evaluation batch.

  Args:
    per_example: ``[batch]`` losses.
    weights: optional ``[batch]`` non-negative weights.
    reduction: one of ``none | sum | mean | weighted_mean``.

  Returns:
    a scalar, or ``[batch]`` for ``"none"``.

  Examples:
    >>> import jax.numpy as jnp
    >>> reduce(jnp.array([1.0, 3.0]), weights=jnp.array([1.0, 0.0]),
    ...        reduction="weighted_mean")
    Array(1., dtype=float32)
  """
  if reduction not in _REDUCTIONS:
    raise ValueError(f"reduction={reduction!r} is not one of {list(_REDUCTIONS)}")
  loss = jnp.asarray(per_example)
  if loss.ndim != 1:
    raise ValueError(f"reduce: per_example must be [batch], got shape {loss.shape}")
  if weights is not None:
    w = jnp.asarray(weights)
    if w.shape != loss.shape:
      raise ValueError(f"reduce: weights shape {w.shape} must equal per_example shape "
                       f"{loss.shape}")
    weighted = loss * w.astype(loss.dtype)
  else:
    w, weighted = None, loss
  if reduction == "none":
    return weighted
  if reduction == "sum":
    return jnp.sum(weighted)
  if reduction == "mean" or w is None:
    return jnp.mean(weighted)
  total = jnp.sum(w.astype(loss.dtype))
  return jnp.sum(weighted) / jnp.maximum(total, jnp.finfo(loss.dtype).tiny)


# --- Training-loop adapter ---------------------------------------------------

# How each classification-usable loss consumes (logits [B, C], labels [B]):
#   labels        loss(logits, labels)                       integer labels as-is
#   onehot        loss(logits, one_hot(labels))              softmax losses on logits
#   probs         loss(softmax(logits), one_hot(labels))     "squared error on softmax outputs"
#   dense         loss(logits, one_hot, activation="softmax") overlap losses on a [B, C] "mask"
#   binary        loss(z, labels), z = logits[:, 1] - logits[:, 0] (or logits[:, 0] if C is 1)
_ADAPTERS: dict[str, str] = {
    "sparse_categorical_cross_entropy": "labels",
    "multi_margin": "labels",
    "categorical_cross_entropy": "onehot",
    "focal": "onehot",
    "poly1_cross_entropy": "onehot",
    "kl_divergence": "onehot",
    "categorical_hinge": "onehot",
    "mean_squared_error": "probs",
    "mean_absolute_error": "probs",
    "huber": "probs",
    "smooth_l1": "probs",
    "log_cosh": "probs",
    "mean_squared_log_error": "probs",
    "poisson": "probs",
    "cosine_similarity": "probs",
    "dice": "dense",
    "tversky": "dense",
    "dice_cross_entropy": "dense",
    "binary_cross_entropy": "binary",
    "binary_focal": "binary",
    "hinge": "binary",
    "squared_hinge": "binary",
    "generalized_cross_entropy": "labels",
    "reverse_cross_entropy": "labels",
    "symmetric_cross_entropy": "labels",
    "normalized_cross_entropy": "labels",
    "nce_rce": "labels",
    "bootstrapped_cross_entropy": "labels",
    "logit_adjusted_cross_entropy": "labels",
    "ldam": "labels",
    "focal_sample_dependent": "labels",
    "brier": "labels",
    "square_loss": "onehot",
}

# Options that are per-class statistics of the training split: `cnnjax.tasks.Classification`
# fills them in from the data when the config leaves them unset.
CLASS_STATISTICS = ("class_counts", "class_priors")

# Set by the adapter itself; a user option of that name would contradict it.
_FIXED = {"from_logits", "activation", "axis", "log_input"}


def classification_names() -> list[str]:
  """Sorted canonical names usable with `for_classification` (binary ones need 2 classes)."""
  return sorted(_ADAPTERS)


def options_of(name: str) -> list[str]:
  """The keyword options loss `name` accepts, sorted."""
  fn = get(name)
  params = inspect.signature(fn).parameters.values()
  return sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def accepted_options(canonical: str, extra: tuple[str, ...] = ()) -> list[str]:
  """The options a config may set for loss ``canonical`` (adapter-fixed ones excluded)."""
  return sorted({o for o in options_of(canonical) if o not in _FIXED} | set(extra))


def checked_options(canonical: str, options: dict[str, Any],
                    extra: tuple[str, ...] = ()) -> dict[str, Any]:
  """``options`` without the unset (None) ones; raises ValueError for one the loss lacks.

  ``extra`` names options an adapter adds to the loss's own (e.g. ``ignore_index``).
  """
  return _checked_options(canonical, options, extra)


def _checked_options(canonical: str, options: dict[str, Any],
                     extra: tuple[str, ...] = ()) -> dict[str, Any]:
  accepted = accepted_options(canonical, extra)
  opts = {k: v for k, v in options.items() if v is not None}
  for key in sorted(opts):
    if key not in accepted:
      raise ValueError(f"loss.{key} is not an option of {canonical}; "
                       f"accepted: {_names_list(accepted)} (None unsets an option)")
  return opts


def _adapted(canonical: str, kind: str, num_classes: int,
             opts: dict[str, Any]) -> ClassificationLoss:
  loss_fn = _LOSSES[canonical]

  def per_example(logits: jax.Array, labels: jax.Array) -> jax.Array:
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    widths = (1, 2) if kind == "binary" else (num_classes,)
    if logits.ndim != 2 or logits.shape[-1] not in widths:
      want = " or ".join(f"[batch, {w}]" for w in widths)
      raise ValueError(f"{canonical}: logits must be {want} for {num_classes} classes, "
                       f"got shape {logits.shape}")
    if labels.shape != logits.shape[:1]:
      raise ValueError(f"{canonical}: labels shape {labels.shape} must be [batch] = "
                       f"{logits.shape[:1]} to match logits shape {logits.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise TypeError(f"{canonical}: labels must be integer class indices, got "
                      f"{labels.dtype} instead")
    if kind == "labels":
      return loss_fn(logits, labels, **opts)
    if kind == "binary":
      z = logits[:, 1] - logits[:, 0] if logits.shape[-1] == 2 else logits[:, 0]
      return loss_fn(z, labels.astype(logits.dtype), **opts)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    if kind == "onehot":
      return loss_fn(logits, onehot, **opts)
    if kind == "dense":
      return loss_fn(logits, onehot, activation="softmax", **opts)
    return loss_fn(jax.nn.softmax(logits, axis=-1), onehot, **opts)

  return per_example


def for_classification(name: str, *, num_classes: int,
                       **options: Any) -> ClassificationLoss:
  """Adapts loss `name` to a classifier's ``(logits [B, C], labels [B]) -> [B]``.

  Labels are turned into what the loss needs:

  * ``sparse_categorical_cross_entropy``, ``multi_margin``: integer labels as-is.
  * ``categorical_cross_entropy``, ``focal``, ``poly1_cross_entropy``,
    ``kl_divergence``: one-hot targets, logits in. ``categorical_hinge``: one-hot,
    on the raw logits (scores). ``square_loss``: one-hot, on the raw logits.
  * regression losses (``mean_squared_error``, ``mean_absolute_error``, ``huber``,
    ``smooth_l1``, ``log_cosh``, ``mean_squared_log_error``, ``poisson``,
    ``cosine_similarity``): ``softmax(logits)`` against one-hot, the classic
    "squared error on softmax outputs".
  * ``dice``, ``tversky``, ``dice_cross_entropy``: ``softmax(logits)`` as a one-row
    mask against the one-hot label.
  * binary losses (``binary_cross_entropy``, ``binary_focal``, ``hinge``,
    ``squared_hinge``) need ``num_classes == 2``. A two-logit head (the usual
    ``Dense(num_classes)``) is scored by ``z = logits[:, 1] - logits[:, 0]``, for
    which ``sigmoid(z) = softmax(logits)[:, 1]``: the predicted class (argmax) and
    the binary decision (``z > 0``) always agree. A one-logit head (``C = 1``) uses
    its logit directly. Labels 0/1 (the hinge losses map them to -1/+1).

  `from_logits` (and `activation`) are fixed by the adapter. Options whose value
  is None are dropped, so a config can carry unset placeholders. The options are
  checked now, by tracing the loss once on abstract inputs.

  Args:
    name: a loss name or alias from `classification_names`.
    num_classes: the dataset's number of classes (>= 2).
    **options: keyword options of that loss (see `options_of`).

  Returns:
    ``fn(logits, labels) -> [batch]`` with logits ``[batch, num_classes]`` (or
    ``[batch, 1]`` for a binary loss) and integer labels ``[batch]``.

  Raises:
    ValueError: for an unknown name, a loss that cannot train a classifier, a
      binary loss with ``num_classes != 2``, or an option the loss does not accept.

  Examples:
    >>> import jax.numpy as jnp
    >>> fn = for_classification("mse", num_classes=2)
    >>> fn(jnp.array([[0.0, 0.0]]), jnp.array([1]))
    Array([0.25], dtype=float32)
  """
  canonical = canonical_name(name)
  if canonical not in _ADAPTERS:
    raise ValueError(f"loss.name={name!r} cannot train a classifier from (logits, labels); "
                     f"use one of {_names_list(classification_names())}")
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2")
  kind = _ADAPTERS[canonical]
  if kind == "binary" and num_classes != 2:
    usable = [n for n in classification_names() if _ADAPTERS[n] != "binary"]
    raise ValueError(f"loss.name={name!r} needs 2 classes, dataset has {num_classes}; "
                     f"use one of {_names_list(usable)}")
  per_example = _adapted(canonical, kind, num_classes, _checked_options(canonical, options))
  per_example.__name__ = f"{canonical}_for_classification"
  per_example.__doc__ = (f"{canonical} on (logits [B, {num_classes}], labels [B]) -> [B]; "
                         f"options {_checked_options(canonical, options)}.")
  # Surface bad option values (e.g. label_smoothing=2) now, not inside the trainer.
  jax.eval_shape(per_example, jax.ShapeDtypeStruct((2, num_classes), jnp.float32),
                 jax.ShapeDtypeStruct((2,), jnp.int32))
  return per_example


def segmentation_names() -> list[str]:
  """Sorted canonical names usable with `for_segmentation`."""
  return sorted(_dense.SEGMENTATION_LOSSES)


def for_segmentation(name: str, *, num_classes: int, **options: Any) -> _dense.PixelLoss:
  """Adapts loss ``name`` to ``(logits [B, ..., C], integer labels [B, ...]) -> [B]``.

  Pixels are reduced inside the loss (see `cnnjax.losses.dense`): cross-entropy and
  focal average over the example's valid pixels; Dice and Tversky are computed per
  class over those pixels and averaged over the classes; ``ignore_index`` (any loss)
  takes pixels with that label out of every sum. Options set to None are dropped;
  the rest are checked now, by tracing the loss once on abstract inputs.

  Args:
    name: a loss name or alias from `segmentation_names`.
    num_classes: classes per pixel (background included).
    **options: the loss's keyword options (`options_of`) and ``ignore_index``.

  Raises:
    ValueError: a loss that does not fit per-pixel labels, or an option it lacks.

  Examples:
    >>> import jax.numpy as jnp
    >>> fn = for_segmentation("dice", num_classes=2, smooth=0.0)
    >>> logits = jnp.array([[[9.0, -9.0], [-9.0, 9.0]]])  # 2 pixels, both right
    >>> fn(logits, jnp.array([[0, 1]])).round(4)
    Array([0.], dtype=float32)
  """
  canonical = canonical_name(name)
  if canonical not in _dense.SEGMENTATION_LOSSES:
    raise ValueError(f"loss.name={name!r} does not fit per-pixel class labels (task "
                     f"'segmentation'); use one of {_names_list(segmentation_names())}")
  opts = _checked_options(canonical, options, extra=("ignore_index",))
  per_example = _dense.pixel_loss(canonical, num_classes, opts)
  jax.eval_shape(per_example, jax.ShapeDtypeStruct((2, 4, 4, num_classes), jnp.float32),
                 jax.ShapeDtypeStruct((2, 4, 4), jnp.int32))
  return per_example


__all__ = [
    "ALIASES", "CLASS_STATISTICS", "accepted_options", "box_iou", "canonical_name",
    "checked_options", "class_balanced_weights", "classification_names", "for_classification",
    "for_segmentation", "get", "ldam_margins", "names", "options_of", "reduce",
    "segmentation_names", "valid_mask", *sorted(_LOSSES),
]
