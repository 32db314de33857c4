"""What a run leaves for people: metrics files, TensorBoard events, plots, tables, progress.

* `files`: ``metrics.jsonl`` + TensorBoard (`MetricsWriter`), atomic `write_json`.
* `events`: the TensorBoard event-file writer (no TensorFlow).
* `plots`: learning curves and the confusion matrix (matplotlib, imported on first use).
* `console`: the progress display, `table` and `format_value`.
"""

from cnnjax.reporting.console import Progress, format_value, table
from cnnjax.reporting.files import MetricsWriter, write_json

__all__ = ["MetricsWriter", "Progress", "format_value", "table", "write_json"]
