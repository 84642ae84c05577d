"""The built-in steps, one module per phase, each with its own ``StepRegistry``.

``alignment`` and ``governance`` are the plugin's protocol steps (every job kind); ``training``
and ``scoring`` belong to the regression job kinds.
"""

from __future__ import annotations

from vfm_flower.party import StepRegistry


def protocol_steps() -> StepRegistry:
    """The plugin's own steps, which every job uses: hello, alignment, close."""
    from vfm_flower.steps import alignment, governance

    return StepRegistry(governance.STEPS, alignment.STEPS)


def builtin_steps() -> StepRegistry:
    """Every built-in step: the protocol steps and the regression jobs' steps."""
    from vfm_flower.steps import evaluation, scoring, training

    return StepRegistry(protocol_steps(), training.STEPS, evaluation.STEPS, scoring.STEPS)
