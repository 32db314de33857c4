"""Loss x optimizer studies and the optimizer benchmark: grids of runs sharing compiled
programs, reported with evidence.

    python -m experiments.compare --config=experiments/configs/compare_optimizers.py
    python -m experiments.benchmark_optimizers --config=experiments/configs/optimizer_benchmark.py

See docs/studies.md and docs/optimizer_benchmark.md.
"""

from cnnjax.study.grid import Variant, expand, group_key, group_variants, parse_loss_spec
from cnnjax.study.plots import plot_all
from cnnjax.study.profiles import benchmark_score, performance_profiles
from cnnjax.study.report import aggregate, welch, write_report, write_results
from cnnjax.study.vmapped import build_group, measure_vmap, resolve_strategy, train_group

__all__ = [
    "Variant", "aggregate", "benchmark_score", "build_group", "expand", "group_key",
    "group_variants", "measure_vmap", "parse_loss_spec", "performance_profiles", "plot_all",
    "resolve_strategy", "train_group", "welch", "write_report", "write_results",
]
