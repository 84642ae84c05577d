"""The built-in steps, one module per phase, each with its own ``StepRegistry``.

``alignment`` and ``governance`` are the plugin's protocol steps (every job kind); ``training``
and ``scoring`` belong to the regression job kinds, ``overlap`` to the overlap job.
"""

from __future__ import annotations

from vfm_flower.party import StepRegistry


def protocol_steps() -> StepRegistry:
    """The plugin's own steps, which every job uses: hello, alignment, close."""
    from vfm_flower.steps import alignment, governance

    return StepRegistry(governance.STEPS, alignment.STEPS)


def builtin_steps() -> StepRegistry:
    """Every built-in step: the protocol steps, the regression jobs' and the overlap job's."""
    from vfm_flower.steps import (
        evaluation,
        overlap,
        scoring,
        segments,
        segments_partners,
        training,
        trees,
        trees_model,
        trees_scoring,
    )

    return StepRegistry(
        protocol_steps(),
        training.STEPS,
        evaluation.STEPS,
        scoring.STEPS,
        overlap.STEPS,
        segments.STEPS,
        segments_partners.STEPS,
        trees.STEPS,
        trees_model.STEPS,
        trees_scoring.STEPS,
    )
