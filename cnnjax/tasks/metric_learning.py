"""Metric learning: an embedding trained on pairs or triplets of a classification dataset.

The model's output ``[B, embedding_dim]`` is the embedding (`cnnjax.models.EmbeddingCNN`
L2-normalises it). Training batches are formed in the input pipeline (`PairedView`):
``batch_size`` anchors in the epoch's order, each followed by a *partner* of its class
drawn from the training split, deterministically from ``(seed, epoch, anchor)``, so a
step sees ``2 * batch_size`` images and every row has a positive in its batch. Each row
also carries two numbers in [0, 1) (``pick``) from ``(seed, epoch, step, row)``; inside
the compiled step `cnnjax.losses.mining.mine` chooses each anchor's positive and
negative from the batch's distance matrix (``loss.mining``: random, batch_hard,
semi_hard) and the loss scores them:

* pair losses, the mean over the anchor's (positive, negative) pairs of its distances
  ``d``: ``contrastive`` (y = 1 / 0), ``hinge_embedding`` (y = 1 / -1), and
  ``cosine_similarity`` (``-cos(a, p)`` and ``+cos(a, n)``, Keras' loss and its negation);
* ``triplet_margin`` on (anchor, positive, negative);
* ``supervised_contrastive`` on the whole batch (no mining).

Evaluation (`PairedView.eval_batches`) puts the split's rows (queries) and the training
split's rows (the gallery) side by side in each batch; the step scatters embeddings,
labels and raw pixels into ``[n, ...]`` buffers at the rows' indices, so the buffers of
all batches (and devices) add up to the whole split. `finalize` then computes, on the
embeddings and on the raw pixels of the same rows (the baseline an embedding must beat):
recall@1, recall@5, mAP@R (queries against the other queries) and k-NN accuracy
(queries against the gallery), see `cnnjax.retrieval`. Headline: recall@1.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from cnnjax import config as config_lib
from cnnjax import losses as losses_lib
from cnnjax import retrieval
from cnnjax.data import views
from cnnjax.losses import mining
from cnnjax.tasks.base import Batch, Task, TaskLoss

PAIR_LOSSES = ("contrastive", "hinge_embedding", "cosine_similarity")
LOSSES = (*PAIR_LOSSES, "triplet_margin", "supervised_contrastive")
_PARTNER_KEY, _PICK_KEY, _EVAL_PICK_KEY = 0x9A1E5, 0x91C4, 0xE7A1


class PairedView(views.DatasetView):
  """Training batches of anchors and same-class partners; evaluation with the gallery.

  Train batch (``b = batch_size // process_count`` anchors on this process)::

    image [2b, H, W, C]  rows (a_0, p_0, a_1, p_1, ...): anchor, then its partner
    label [2b]           (and every other field of the dataset, likewise)
    pick  [2b, 2]        numbers in [0, 1) for random mining

  A partner is another training example of the anchor's class, the anchor itself only
  when its class has one example. Pairs are adjacent, so a split of the batch over
  devices keeps them together.
  """

  def __init__(self, base):
    super().__init__(base)
    labels = base.split_arrays("train", dtype=np.uint8)["label"]
    self._by_class = np.argsort(labels, kind="stable")  # example indices grouped by class
    counts = np.bincount(labels, minlength=base.info.num_classes)
    self._start = (np.cumsum(counts) - counts)[labels]  # where each example's class begins
    self._count = counts[labels]
    self._position = np.empty_like(self._by_class)
    self._position[self._by_class] = np.arange(len(labels))

  def partners(self, epoch: int) -> np.ndarray:
    """``[n_train]``: every training example's partner in ``epoch`` (seed and epoch only).

    The partner is ``1 + floor(u (n - 1))`` places further along the example's class (of
    ``n`` members, cyclically), ``u`` keyed on (seed, epoch, example): uniform over the
    other members.
    """
    n = self._count
    u = views.keyed_uniform(n.shape, _PARTNER_KEY, self.seed, epoch)
    step = np.where(n > 1, 1 + np.floor(u * np.maximum(n - 1, 1)).astype(np.int64), 0)
    within = (self._position - self._start + step) % n
    return self._by_class[self._start + within]

  def train_batches(self, epoch: int, *, start_step: int = 0, process_index: int = 0,
                    process_count: int = 1):
    data = self.base
    b = data.batch_size // process_count
    if b * process_count != data.batch_size:
      raise ValueError(f"batch_size ({data.batch_size}) must be divisible by the process "
                       f"count ({process_count})")
    fields = data.split_arrays("train", dtype=np.uint8)
    steps = data.steps_per_epoch
    # The anchors are the rows `Dataset.train_batches` gives this process at each step.
    rows = data.epoch_order(epoch)[: steps * data.batch_size].reshape(steps, process_count, b)
    partner = self.partners(epoch)
    pick = views.keyed_uniform((steps, process_count, 2 * b, 2), _PICK_KEY, self.seed, epoch)
    for step in range(start_step, steps):
      anchors = rows[step, process_index]
      pairs = np.stack([anchors, partner[anchors]], axis=1).reshape(-1)
      batch = {k: v[pairs] for k, v in fields.items()}
      batch["image"] = views.pipeline.to_float(batch["image"])
      batch["pick"] = pick[step, process_index].astype(np.float32)
      yield batch

  def eval_batches(self, split: str, *, process_index: int = 0, process_count: int = 1):
    data = self.base
    n, e = data.num_examples(split), data.eval_batch_size
    pick = views.keyed_uniform((-(-n // e) * e, 2), _EVAL_PICK_KEY).astype(np.float32)
    for batch in views.zipped_eval_batches(
        [("", data.split_arrays(split, dtype=np.uint8), n),
         ("gallery_", data.split_arrays("train", dtype=np.uint8), data.num_examples("train"))],
        e, process_index=process_index, process_count=process_count):
      batch["pick"] = pick[np.minimum(batch["index"], len(pick) - 1)]
      yield batch


def _gather(x: jax.Array, index: jax.Array) -> jax.Array:
  return jnp.take(x, index, axis=0)


def mined_loss(name: str, embeddings: jax.Array, batch: Batch, *, mining_mode: str,
               options: Mapping[str, Any]) -> jax.Array:
  """Per-row loss ``[B]`` of loss ``name`` on the positives and negatives mined in ``batch``.

  ``batch`` holds ``label``, ``pick`` and optionally ``mask`` (padding rows are never
  chosen and cost 0). Rows without a positive or a negative cost 0.
  """
  valid = batch.get("mask")
  labels = batch["label"]
  fn = losses_lib.get(name)
  if name == "supervised_contrastive":
    return fn(embeddings, labels, where=valid, **options)
  d = mining.pairwise_distances(embeddings)
  pos, neg, ok = mining.mine(d, labels, mode=mining_mode, pick=batch["pick"], valid=valid)
  if name == "triplet_margin":
    loss = fn((embeddings, _gather(embeddings, pos), _gather(embeddings, neg)), **options)
  elif name == "cosine_similarity":
    loss = 0.5 * (fn(embeddings, _gather(embeddings, pos))
                  - fn(embeddings, _gather(embeddings, neg)))
  else:
    rows = jnp.arange(d.shape[0])
    pair_d = jnp.stack([d[rows, pos], d[rows, neg]], axis=1)
    similar = jnp.array([1.0, 0.0 if name == "contrastive" else -1.0])
    loss = fn(pair_d, jnp.broadcast_to(similar, pair_d.shape), **options)
  return jnp.where(ok, loss, 0.0)


def _scatter(size: int, index: jax.Array, values: jax.Array, mask: jax.Array) -> jax.Array:
  """``values`` written into a zero ``[size, ...]`` buffer at ``index`` (masked rows dropped)."""
  index = jnp.where(mask > 0, index, size)  # out of range: dropped
  zeros = jnp.zeros((size, *values.shape[1:]), values.dtype)
  return zeros.at[index].add(values, mode="drop")


def eval_step(state, batch: Batch, *, task: "MetricLearning", loss_fn: TaskLoss,
              apply_fn: Callable, axis_name: str | None = None) -> dict[str, jax.Array]:
  """Embeds the batch's queries and gallery rows; the task's summable buffers and the loss."""
  variables = {"params": state.eval_params()}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  b = batch["image"].shape[0]
  both = apply_fn(variables, jnp.concatenate([batch["image"], batch["gallery_image"]]),
                  train=False)
  outputs = {"query": both[:b], "gallery": both[b:]}
  mask = batch["mask"]
  per_example = loss_fn(outputs["query"], batch)
  sums = {"loss_sum": jnp.sum(jnp.where(mask > 0, per_example, 0.0)), "count": jnp.sum(mask),
          **task.eval_sums(outputs, batch)}
  return sums if axis_name is None else lax.psum(sums, axis_name)


class MetricLearning(Task):
  """Embeddings ranked by recall@1 (see the module docstring).

  Example:
    >>> from cnnjax.data import catalog
    >>> task = MetricLearning(catalog.dataset_info("digits"))
    >>> task.output_size, task.headline
    (32, 'recall_at_1')
  """

  name = "metric_learning"
  batch_fields = ("label",)
  train_metric_names = ("same_class_distance", "other_class_distance")
  headline = "recall_at_1"
  headline_goal = "max"

  def _section(self) -> ml_collections.ConfigDict:
    return (self.config or config_lib.get_config()).metric_learning

  @property
  def output_size(self) -> int:
    return self._section().embedding_dim

  def loss_names(self) -> list[str]:
    return list(LOSSES)

  def _normalize_field(self, config: ml_collections.ConfigDict) -> dict[str, bool]:
    from cnnjax import models  # pylint: disable=g-import-not-at-top
    if "normalize" in models.model_fields(config.model):
      return {"normalize": config.metric_learning.normalize}
    return {}

  def check_config(self, config: ml_collections.ConfigDict) -> None:
    if config.metric_learning.normalize and not self._normalize_field(config):
      raise ValueError(f"metric_learning.normalize=True needs a model with an L2-normalised "
                       f"embedding; model={config.model!r} has none: use embedding_cnn or "
                       "set metric_learning.normalize=False")

  def make_model(self, config: ml_collections.ConfigDict, **fields):
    return super().make_model(config, **fields, **self._normalize_field(config))

  def prepare(self, data):
    return data if isinstance(data, PairedView) else PairedView(data)

  def make_loss(self, loss_config: ml_collections.ConfigDict) -> TaskLoss:
    name = losses_lib.canonical_name(loss_config.name)
    if name not in LOSSES:
      raise ValueError(f"loss.name={loss_config.name!r} cannot train an embedding; use one "
                       f"of {list(LOSSES)}")
    options = config_lib.loss_options(loss_config)
    mode = options.pop("mining", None)
    if name == "supervised_contrastive" and mode is not None:
      raise ValueError("loss.mining is not an option of supervised_contrastive (every pair "
                       "of the batch takes part); leave it None")
    mode = mode or "random"
    if mode not in mining.MINING:
      raise ValueError(f"loss.mining={mode!r} is not accepted; expected one of "
                       f"{list(mining.MINING)}")
    accepted = [o for o in losses_lib.options_of(name) if o not in ("where", "axis")]
    for key in sorted(options):
      if key not in accepted:
        raise ValueError(f"loss.{key} is not an option of {name}; accepted: "
                         f"{accepted + ([] if name == 'supervised_contrastive' else ['mining'])}"
                         " (None unsets an option)")

    def loss_fn(outputs: jax.Array, batch: Batch) -> jax.Array:
      return mined_loss(name, outputs, batch, mining_mode=mode, options=options)

    loss_fn.__name__ = f"{name}_{mode}" if name != "supervised_contrastive" else name
    jax.eval_shape(loss_fn, jax.ShapeDtypeStruct((4, self.output_size), jnp.float32),
                   {"label": jax.ShapeDtypeStruct((4,), jnp.int32),
                    "pick": jax.ShapeDtypeStruct((4, 2), jnp.float32)})
    return loss_fn

  def train_metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    d = mining.pairwise_distances(outputs)
    same, other = mining.candidates(batch["label"])
    mean_of = lambda m: jnp.sum(jnp.where(m, d, 0.0)) / jnp.maximum(jnp.sum(m), 1)
    return {"same_class_distance": mean_of(same), "other_class_distance": mean_of(other)}

  def eval_step(self, run, loss_fn: TaskLoss) -> Callable:
    return functools.partial(eval_step, task=self, loss_fn=loss_fn,
                             apply_fn=run.eval_model.apply)

  def _sizes(self) -> tuple[int, int]:
    """Buffer rows: the largest evaluation split, and the train split (the gallery)."""
    data = self.data
    return (max(data.num_examples(s) for s in ("validation", "test")),
            data.num_examples("train"))

  def eval_sums(self, outputs: Mapping[str, jax.Array], batch: Batch) -> dict[str, jax.Array]:
    n_query, n_gallery = self._sizes()
    flat = lambda x: x.reshape(x.shape[0], -1)
    sums = {}
    for role, prefix, size in (("query", "", n_query), ("gallery", "gallery_", n_gallery)):
      mask, index = batch[prefix + "mask"], batch[prefix + "index"]
      sums[f"{role}_embedding"] = _scatter(size, index, outputs[role], mask)
      sums[f"{role}_pixels"] = _scatter(size, index, flat(batch[prefix + "image"]), mask)
      sums[f"{role}_label"] = _scatter(size, index, batch[prefix + "label"], mask)
    return sums

  def finalize(self, sums: Mapping[str, Any],
               validation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    del validation  # no metric here is calibrated on validation
    final = super().finalize(sums)
    n = final["count"]
    k = self._section().knn_k
    q_labels = np.asarray(sums["query_label"])[:n]
    g_labels = np.asarray(sums["gallery_label"])
    embedding = np.asarray(sums["query_embedding"])[:n]
    final.update(retrieval.retrieval_metrics(embedding, q_labels,
                                             np.asarray(sums["gallery_embedding"]), g_labels, k=k))
    pixels = retrieval.retrieval_metrics(np.asarray(sums["query_pixels"])[:n], q_labels,
                                         np.asarray(sums["gallery_pixels"]), g_labels, k=k)
    final.update({f"pixel_{key}": v for key, v in pixels.items()})
    final["embeddings"], final["labels"] = embedding, q_labels
    return final

  def report(self, directory: str, final: Mapping[str, Any], title: str,
             examples: Mapping[str, np.ndarray] | None = None) -> list[str]:
    del examples  # the plots here need no test examples
    from cnnjax.reporting import task_plots  # pylint: disable=g-import-not-at-top
    task_plots.plot_embedding_pca(
        final["embeddings"], final["labels"], os.path.join(directory, "embedding_pca.png"),
        f"{title} test embeddings: recall@1 {final['recall_at_1']:.4f} (raw pixels "
        f"{final['pixel_recall_at_1']:.4f})")
    return ["embedding_pca.png"]

  def summary_rows(self, summary: Mapping[str, Any]) -> Sequence[tuple[str, Any]]:
    keys = ("recall_at_5", "map_at_r", "knn_accuracy")
    rows = [(f"test {k}", summary.get(f"test_{k}")) for k in keys]
    return rows + [(f"test {k} (raw pixels)", summary.get(f"test_pixel_{k}"))
                   for k in ("recall_at_1", *keys)]
