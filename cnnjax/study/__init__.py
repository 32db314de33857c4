"""Loss x optimizer studies: grids of runs, trained in vmapped groups, reported with evidence.

    python -m experiments.compare --config=experiments/configs/compare_optimizers.py

See docs/studies.md.
"""

from cnnjax.study.grid import Variant, expand, group_key, group_variants, parse_loss_spec
from cnnjax.study.plots import plot_all
from cnnjax.study.report import aggregate, welch, write_report, write_results
from cnnjax.study.vmapped import build_group, measure_vmap, train_group

__all__ = [
    "Variant", "aggregate", "build_group", "expand", "group_key", "group_variants",
    "measure_vmap", "parse_loss_spec", "plot_all", "train_group", "welch", "write_report",
    "write_results",
]
