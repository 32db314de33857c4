"""Every config key cnnjax knows, each with its one default: `cnnjax.config.get_config`.

Experiment configs import this module and override only what differs. The schema, its
comments and `validate` live in the library (`cnnjax/config.py`), so that a program
using cnnjax without this directory sees the same keys and checks.
"""

import ml_collections

from cnnjax import config


def get_config() -> ml_collections.ConfigDict:
  return config.get_config()
