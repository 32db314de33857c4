"""Metric learning on digits (embedded): embedding_cnn, supervised contrastive loss.

    python -m experiments.main --config=experiments/configs/metric_learning.py

embedding_cnn (32-d, L2-normalised embeddings), supervised contrastive loss (Khosla et al.
2020, temperature 0.1) over each batch of 32 anchors + 32 same-class partners, AdamW 3e-3
with cosine decay, +-1 pixel shifts, 6 epochs (240 steps).

Expected, as measured (2-core CPU, load average 9-10 from other jobs; seeds 0, 1, 2, each from a fresh
data directory), mean +- std over the seeds:

    test recall@1 0.9954 +- 0.0016   (raw pixels, same runs: 0.9667)
    test recall@5 0.9981 +- 0.0016   (0.9944)
    test mAP@R    0.9742 +- 0.0032   (0.5173)
    test 5-NN     0.9898 +- 0.0016   (0.9722)

Wall 57-63 s per run including data preparation and compilation (23 s of compilation
with a cold compilation cache, 3-7 s with a warm one).
"""

from experiments.configs import default


def get_config():
  c = default.get_config()
  c.task = "metric_learning"
  c.model = "embedding_cnn"
  c.num_epochs = 6
  c.loss.label_smoothing = None
  c.loss.name = "supervised_contrastive"
  c.loss.temperature = 0.1
  return c
