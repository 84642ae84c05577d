"""Vertical gradient-boosted trees (server side): SecureBoost with hidden membership.

Align, then prepare (every party), then for every level of every tree four rounds (the
passive parties' histograms while the label owner computes its next randomness; the label
owner's decision; the passive parties' partitions, again with the label owner's
randomness; the label owner's routing and next level), then each party saves its part of the
model and the label owner evaluates on its hold-out rows. The schedule is fixed by the job's
parameters (``4 x depth`` rounds a tree), so the server, like the passive parties, learns only
the stop decision (with early stopping, how many trees) and the released metrics. Party side
and cryptography: ``vfm_flower.steps.trees``, ``vfm_flower.secureboost``.
"""

from __future__ import annotations

import time
from typing import Any

from vfm_flower.errors import ConfigurationError, ProtocolAbort
from vfm_flower.jobs_builtin import SecureBoostParams
from vfm_flower.strategies.base import VerticalStrategy
from vfm_flower.strategies.session import VerticalSession


class VerticalSecureBoost(VerticalStrategy):
    """Train (or evaluate) vertical gradient-boosted trees: binary, multiclass, squared error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.job.kind != "secureboost":
            raise ConfigurationError(
                f"VerticalSecureBoost runs job kind 'secureboost', not '{self.job.kind}'"
            )
        self.params = SecureBoostParams.from_job(self.job)

    def run(self, session: VerticalSession) -> None:
        session.align()
        lo, passives = session.label_owner, session.passive_parties
        if not passives:
            raise ConfigurationError("secureboost needs at least one passive party")
        if self.job.operation == "score":
            self.score(session)
            return
        if self.job.operation not in ("train", "evaluate"):
            raise ConfigurationError(f"unknown operation '{self.job.operation}'")
        boosting = self.params.boosting
        with session.phase("train") as sizes:
            step = 0
            session.send("train.tree_prepare", step=step)
            started = time.monotonic()
            trees = 0
            while True:
                for _level in range(boosting.max_depth):
                    step += 1
                    session.send_each(
                        {"train.tree_histograms": passives, "train.tree_precompute": [lo]},
                        step=step,
                        params={"share": 0.5},
                    )
                    step += 1
                    session.send("train.tree_decide", to=[lo], step=step)
                    step += 1
                    session.send_each(
                        {"train.tree_partition": passives, "train.tree_precompute": [lo]},
                        step=step,
                        params={"share": 1.0},
                    )
                    step += 1
                    advanced = session.send("train.tree_advance", to=[lo], step=step)[lo].public
                trees += 1
                rate = (time.monotonic() - started) / trees
                session.progress(
                    "tree",
                    {
                        "tree": trees,
                        "trees": boosting.n_trees,
                        "seconds_per_tree": round(rate, 2),
                        "eta_seconds": round(rate * max(boosting.n_trees - trees, 0), 1),
                    },
                )
                if advanced.get("stop"):
                    break
                if trees >= boosting.n_trees:
                    raise ProtocolAbort(
                        "train", lo, f"did not stop after trees={boosting.n_trees} (job parameter)"
                    )
            step += 1
            evaluated = session.send("train.tree_evaluate", to=[lo], step=step)
            step += 1
            session.send("train.tree_finish", to=passives, step=step)
            public = evaluated[lo].public
            session.publish(**public)
            kept = int(public.get("trees", trees))  # with early stopping, the best round's
            session.publish(trees=kept, rounds_per_tree=4 * boosting.max_depth)
            sizes["trees"] = kept

    def score(self, session: VerticalSession) -> None:
        """Every party answers its own splits; the label owner descends the trees."""
        lo = session.label_owner
        with session.phase("score") as sizes:
            session.send("query.tree_score")
            combined = session.send("query.tree_combine", to=[lo])
            scored = int(combined[lo].public.get("scored_rows", 0))
            session.publish(scored_rows=scored)
            sizes["scored_rows"] = scored
