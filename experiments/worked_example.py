r"""The source's hand-computed CNN example, run through cnnjax's own layers.

    python -m experiments.worked_example [--output_json=/tmp/worked_example.json]

A 5x5x1 image goes through: a 3x3 vertical-edge conv ('same' zero padding, no
bias) -> ReLU -> 2x2/2 max pool -> a 3x3 horizontal-edge conv ('same', no bias)
-> ReLU -> 2x2/2 max pool -> flatten -> Dense(3) with the given weights and zero
bias -> softmax. Shapes: 5x5 -> 5x5 -> 5x5 -> 2x2 (a valid pool drops the last
row and column) -> 2x2 -> 2x2 -> 1x1 -> 1 value -> 3 logits -> 3 probabilities.
Prints every stage; ``--output_json`` also writes them as one JSON object with
the keys of `STAGES`. Expected: predicted class 2 (probabilities about
0.2727, 0.00005, 0.7273). See docs/worked_example.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import flags

from experiments import cli

_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write every stage to this JSON file.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks and library logs.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  cli.configure_process()
  from cnnjax.worked_example import format_stages, run, to_json  # pylint: disable=g-import-not-at-top
  stages = run()
  print(format_stages(stages))
  if _OUTPUT_JSON.value:
    with open(_OUTPUT_JSON.value, "w") as f:
      json.dump(to_json(stages), f, indent=1)
    print(f"wrote {_OUTPUT_JSON.value}")


if __name__ == "__main__":
  cli.run(main)
