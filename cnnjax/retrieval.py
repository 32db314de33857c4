"""Retrieval metrics of an embedding, on host numpy: recall@k, mAP@R, k-NN accuracy, PCA.

Distances are Euclidean, computed in float64; neighbours are ranked by distance with
ties broken by the lower index (a stable sort), so every number is a deterministic
function of the embeddings.

* ``recall@k`` (Song et al. 2016, as used throughout deep metric learning): every
  query retrieves its k nearest *other* examples of the same set; the query scores 1
  when at least one of them has its label.
* ``mAP@R`` (Musgrave, Belongie & Lim 2020, "A Metric Learning Reality Check"): for a
  query with R other examples of its class, ``AP@R = 1/R sum_{j<=R} P(j) rel(j)``
  over its R nearest others, with ``P(j)`` the precision among the first j; averaged
  over the queries with R >= 1.
* k-NN accuracy: each query is classified by the majority label of its k nearest
  examples of a separate gallery (the training set), ties going to the smaller label
  (scikit-learn's ``KNeighborsClassifier`` rule).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Euclidean distances ``[n, m]`` between the rows of ``a`` ``[n, d]`` and ``b`` ``[m, d]``.

  Examples:
    >>> distances(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 1.0]]))
    array([[5., 1.]])
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  sq = (np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * a @ b.T)
  return np.sqrt(np.maximum(sq, 0.0))


def _ranked_others(embeddings: np.ndarray) -> np.ndarray:
  """``[n, n - 1]``: each row's other examples, nearest first."""
  d = distances(embeddings, embeddings)
  np.fill_diagonal(d, np.inf)
  return np.argsort(d, axis=1, kind="stable")[:, :-1]


def recall_at_k(embeddings: np.ndarray, labels: np.ndarray,
                ks: Sequence[int] = (1, 5)) -> dict[int, float]:
  """``{k: recall@k}``, every example querying all the others.

  Examples:
    >>> x = np.array([[0.0], [0.1], [5.0], [5.2], [0.3]])
    >>> recall_at_k(x, np.array([0, 0, 1, 1, 1]), ks=(1, 2, 3))  # 0.3 misses twice
    {1: 0.8, 2: 0.8, 3: 1.0}
  """
  labels = np.asarray(labels)
  hits = labels[_ranked_others(embeddings)] == labels[:, None]
  return {k: float(np.mean(np.any(hits[:, :k], axis=1))) for k in ks}


def map_at_r(embeddings: np.ndarray, labels: np.ndarray) -> float:
  """Mean average precision at R (Musgrave et al. 2020), every example querying the others.

  Examples:
    >>> x = np.array([[0.0], [0.1], [5.0], [5.2], [0.3]])
    >>> round(map_at_r(x, np.array([0, 0, 1, 1, 1])), 4)  # (1 + 1 + 1 + 1 + 0) / 5
    0.8
  """
  labels = np.asarray(labels)
  hits = labels[_ranked_others(embeddings)] == labels[:, None]
  r = np.sum(labels[:, None] == labels[None, :], axis=1) - 1
  j = np.arange(1, hits.shape[1] + 1)
  precision = np.cumsum(hits, axis=1) / j
  within = j[None, :] <= r[:, None]
  ap = np.sum(precision * hits * within, axis=1) / np.maximum(r, 1)
  return float(np.mean(ap[r > 0])) if np.any(r > 0) else float("nan")


def knn_accuracy(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                 gallery_labels: np.ndarray, k: int = 5) -> float:
  """Accuracy of the k-nearest-neighbour vote of ``gallery`` on ``query``.

  Examples:
    >>> g = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    >>> knn_accuracy(np.array([[0.5], [10.5]]), np.array([0, 1]), g,
    ...              np.array([0, 0, 1, 1, 1]), k=3)
    1.0
  """
  gallery_labels = np.asarray(gallery_labels)
  nearest = np.argsort(distances(query, gallery), axis=1, kind="stable")[:, :k]
  votes = np.zeros((len(query), int(gallery_labels.max()) + 1), np.int64)
  np.add.at(votes, (np.arange(len(query))[:, None], gallery_labels[nearest]), 1)
  return float(np.mean(np.argmax(votes, axis=1) == np.asarray(query_labels)))


def retrieval_metrics(query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                      gallery_labels: np.ndarray, *, k: int = 5) -> dict[str, float]:
  """``recall_at_1``, ``recall_at_5``, ``map_at_r`` of ``query`` within itself and
  ``knn_accuracy`` (``k`` neighbours) of ``query`` against ``gallery``."""
  recall = recall_at_k(query, query_labels, ks=(1, 5))
  return {"recall_at_1": recall[1], "recall_at_5": recall[5],
          "map_at_r": map_at_r(query, query_labels),
          "knn_accuracy": knn_accuracy(query, query_labels, gallery, gallery_labels, k)}


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The first two principal components of ``x`` ``[n, d]``: ``(coordinates [n, 2],
  explained variance ratios [2])``; signs fixed so each axis's largest loading is positive."""
  x = np.asarray(x, np.float64)
  centered = x - x.mean(axis=0)
  _, s, vt = np.linalg.svd(centered, full_matrices=False)
  vt = vt[:2] * np.sign(vt[:2][np.arange(min(2, len(vt))), np.argmax(np.abs(vt[:2]), axis=1)])[:, None]
  var = s ** 2
  return centered @ vt.T, var[:2] / max(var.sum(), np.finfo(np.float64).tiny)
