"""Protocol steps, one module per phase; importing this package registers them all."""

from vfm_flower.steps import alignment, governance, scoring, training  # noqa: F401
