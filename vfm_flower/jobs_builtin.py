"""The job kinds vfm-flower ships: vertical logistic and linear regression, overlap analysis.

Every parameter that changes what is computed or released is declared here, once, with its
default (the one source of defaults for run-config, the CLI and the steps), the hard range the
code accepts, and the bound a new agreement allows. Why these values:

- ``max-iterations`` 30 (agreement: 1..100): the optimizer converges on the shipped data sets
  in under 40 iterations; each iteration is one more release of masked gradients.
- ``paillier-bits`` 2048 (agreement: 2048..4096): 112-bit security, the floor vfm-flower
  never goes under; 3072 doubles the cost of every encryption.
- ``l2`` 1e-3 (agreement: 1e-6..10): a light ridge penalty that keeps one-hot columns finite.
- ``tol`` 1e-5 (agreement: 1e-8..1e-2): relative objective change that counts as converged;
  the server could otherwise pick the stopping iteration.
- ``holdout-fraction`` 0.3 (agreement: 0.1..0.5): enough hold-out rows for stable AUC and
  lift figures, never so many that training starves or so few that a metric covers a handful
  of customers.
- ``holdout-seed`` 0 = fixed per agreement, derived from its id (agreement: any): every job
  under one agreement holds out the same customers, so repeated jobs never train on rows an
  earlier job held out (a random split per job would expose about 0.3^k of them after k).
- ``early-stopping`` 0 = off (agreement: 0..20): iterations without hold-out improvement.
- ``outcome`` "respond": the verb in the report's plain language (only wording).
- ``junk-threshold`` 0.05 (agreement: 0..0.2): the share of a numeric column's values that
  may fail to parse and be treated as missing (a warning says how many); above it the column
  is refused, naming it. More than a fifth of junk is a column to clean, not to impute.

Overlap (``overlap``, operation ``run``):

- ``segment-party`` / ``segment-column`` "" = none (agreement: any; the holder checks the
  column against its allowed features): overlap per value of one party's own column.
- ``max-segments`` 10 (agreement: 2..20): the most values that column may have. Every value
  costs one more blinding of the holder's whole set (padded partitions hide the column's
  distribution), on the holder and on the label owner (or, for the label owner's column, on
  every passive party); twenty values is twenty times a plain overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

from vfm_flower.jobs import Job, JobKind, JobRegistry, ParamSpec
from vfm_flower.trees import BoostingParams

REGRESSION_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "max-iterations", int, 30, (1, 1000), {"min": 1, "max": 100}, "training iterations at most"
    ),
    ParamSpec(
        "paillier-bits",
        int,
        2048,
        (2048, 8192),
        {"min": 2048, "max": 4096},
        "Paillier modulus bits",
    ),
    ParamSpec(
        "l2", float, 1e-3, (0.0, 1e3), {"min": 1e-6, "max": 10.0}, "L2 regularization strength"
    ),
    ParamSpec("tol", float, 1e-5, (0.0, 1.0), {"min": 1e-8, "max": 1e-2}, "convergence tolerance"),
    ParamSpec(
        "holdout-fraction",
        float,
        0.3,
        (0.01, 0.9),
        {"min": 0.1, "max": 0.5},
        "share of the aligned rows the label owner holds out",
    ),
    ParamSpec(
        "holdout-seed",
        int,
        0,
        (0, 2**63 - 1),
        "*",
        "seed of the hold-out split (0: fixed per agreement, derived from its id)",
    ),
    ParamSpec(
        "early-stopping",
        int,
        0,
        (0, 1000),
        {"min": 0, "max": 20},
        "stop after this many iterations without hold-out improvement (0: off)",
    ),
    ParamSpec("outcome", str, "respond", None, "*", "verb for the positive label in the report"),
    ParamSpec(
        "junk-threshold",
        float,
        0.05,
        (0.0, 0.5),
        {"min": 0.0, "max": 0.2},
        "share of a numeric column's values that may be junk (treated as missing)",
    ),
)

#: What a regression job may release to the server (public facts in signed replies).
REGRESSION_SERVER_RELEASES = (
    # per iteration: the label owner's stop decision only
    "iteration",
    "stop",
    "reason",
    # sizes
    "joint_rows",
    "rows",
    "features",
    "holdout_rows",
    "training_rows",
    "paillier_bits",
    "iterations",
    "scored_rows",
    "model_id",
    # headline hold-out metrics, rounded
    "auc",
    "auc_label_owner_only",
    "log_loss",
    "top_decile_lift",
    "r2",
    "r2_label_owner_only",
    "rmse",
    "headline",
)


def _regression(name: str, description: str) -> JobKind:
    return JobKind(
        name=name,
        operations=("evaluate", "score", "train"),
        params=REGRESSION_PARAMS,
        releases={
            "server": REGRESSION_SERVER_RELEASES,
            "result-owner": ("report", "scores"),
            "party": ("model-slice", "party-report", "model-weights"),
        },
        # a passive party's weights stay encrypted unless the signers release them (once, to
        # their owner, at the end of training)
        opt_in_releases={"party": ("model-weights",)},
        uses_paillier=True,
        description=description,
        label_operations=("evaluate", "train"),
        default_operation="train",
    )


LOGISTIC = _regression("logistic", "vertical logistic regression (exact sigmoid, encrypted)")
LINEAR = _regression("linear", "vertical linear (ridge) regression (encrypted)")

OVERLAP_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "segment-party",
        str,
        "",
        None,
        "*",
        "the party whose column splits the overlap into segments (empty: no segments)",
    ),
    ParamSpec("segment-column", str, "", None, "*", "that party's categorical column (its own)"),
    ParamSpec(
        "max-segments",
        int,
        10,
        (2, 50),
        {"min": 2, "max": 20},
        "the most distinct values the segment column may have",
    ),
)

OVERLAP_KIND = JobKind(
    name="overlap",
    operations=("run",),
    params=OVERLAP_PARAMS,
    releases={
        # the overlap with each party and across all parties (gated), the verdict, the
        # number of released segment cells (never a segment value)
        "server": ("joint_rows", "overlap", "overlap_verdict", "segment_cells"),
        "result-owner": ("overlap-report",),
    },
    description="overlap analysis: shared customers per party and overall (counts only)",
)

SEGMENTS_PARAMS: tuple[ParamSpec, ...] = (
    OVERLAP_PARAMS[0],  # segment-party
    OVERLAP_PARAMS[1],  # segment-column
    OVERLAP_PARAMS[2],  # max-segments
    ParamSpec(
        "target-party",
        str,
        "",
        None,
        "*",
        "the party holding the target (empty: the label owner)",
    ),
    ParamSpec(
        "target-column",
        str,
        "",
        None,
        "*",
        "the target column (empty: the label; a rate per segment)",
    ),
    ParamSpec(
        "target-min",
        float,
        0.0,
        (-1e9, 1e9),
        0.0,
        "lower clipping bound of the target (the agreement fixes it)",
    ),
    ParamSpec(
        "target-max",
        float,
        1.0,
        (-1e9, 1e9),
        1.0,
        "upper clipping bound of the target (the agreement fixes it)",
    ),
    ParamSpec(
        "epsilon",
        float,
        0.0,
        (0.0, 100.0),
        {"min": 0.0, "max": 2.0},
        "differential-privacy epsilon of the release (0: exact figures)",
    ),
    ParamSpec("delta", float, 0.0, (0.0, 0.5), {"min": 0.0, "max": 1e-5}, "delta (gaussian noise)"),
    ParamSpec("noise", str, "laplace", ("laplace", "gaussian"), None, "the noise mechanism"),
    ParamSpec(
        "cross-party",
        str,
        "",
        None,
        "*",
        "the party of a second column to cross with the first (empty: no cross)",
    ),
    ParamSpec("cross-column", str, "", None, "*", "that party's categorical column"),
    REGRESSION_PARAMS[1],  # paillier-bits
)

SEGMENTS_KIND = JobKind(
    name="segments",
    operations=("run",),
    params=SEGMENTS_PARAMS,
    releases={
        # how many cells were released, and the label owner's next step (never a value)
        "server": ("joint_rows", "segment_cells", "segment_next"),
        "result-owner": ("segment-report",),
    },
    uses_paillier=True,
    description="segment statistics: customers and target mean per value of a column",
)

SECUREBOOST_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "objective",
        str,
        "binary",
        ("binary", "multiclass", "squared_error"),
        ["binary", "multiclass", "squared_error"],
        "binary (logistic), multiclass (softmax, next-best-offer) or squared_error",
    ),
    ParamSpec("trees", int, 20, (1, 1000), {"min": 1, "max": 100}, "boosting rounds"),
    ParamSpec("depth", int, 5, (1, 8), {"min": 1, "max": 6}, "depth of every tree"),
    ParamSpec(
        "learning-rate", float, 0.3, (1e-6, 1.0), {"min": 0.01, "max": 1.0}, "leaf shrinkage (eta)"
    ),
    ParamSpec("bins", int, 32, (2, 256), {"min": 2, "max": 64}, "quantile bins per column"),
    ParamSpec("lambda", float, 1.0, (0.0, 1e6), {"min": 0.0, "max": 100.0}, "L2 on leaf values"),
    ParamSpec("gamma", float, 0.0, (0.0, 1e6), {"min": 0.0, "max": 100.0}, "minimum split gain"),
    ParamSpec(
        "min-child-weight",
        float,
        1.0,
        (0.0, 1e6),
        {"min": 0.0, "max": 1000.0},
        "minimum hessian sum of each child",
    ),
    ParamSpec("subsample", float, 1.0, (0.05, 1.0), {"min": 0.1, "max": 1.0}, "rows per tree"),
    ParamSpec("colsample", float, 1.0, (0.05, 1.0), {"min": 0.1, "max": 1.0}, "columns per tree"),
    ParamSpec(
        "early-stopping",
        int,
        0,
        (0, 1000),
        {"min": 0, "max": 50},
        "stop after this many trees without hold-out improvement (0: off)",
    ),
    ParamSpec("classes", int, 2, (2, 64), {"min": 2, "max": 20}, "number of classes (multiclass)"),
    ParamSpec(
        "min-node-rows",
        int,
        100,
        (1, 10**7),
        {"min": 50, "max": 10**6},
        "fewest training customers in a node the trees split (never below the minimum cohort)",
    ),
    REGRESSION_PARAMS[1],  # paillier-bits
    REGRESSION_PARAMS[4],  # holdout-fraction
    REGRESSION_PARAMS[5],  # holdout-seed
    REGRESSION_PARAMS[7],  # outcome
    REGRESSION_PARAMS[8],  # junk-threshold
)

SECUREBOOST_KIND = JobKind(
    name="secureboost",
    operations=("evaluate", "score", "train"),
    params=SECUREBOOST_PARAMS,
    releases={
        "server": (
            "stop",
            "tree",
            "level",
            "joint_rows",
            "rows",
            "features",
            "holdout_rows",
            "training_rows",
            "paillier_bits",
            "trees",
            "rounds_per_tree",
            "auc",
            "log_loss",
            "macro_auc",
            "accuracy",
            "r2",
            "rmse",
            "scored_rows",
        ),
        "result-owner": ("scores", "tree-report"),
        "party": ("tree-model", "tree-importance"),
    },
    uses_paillier=True,
    description="vertical gradient-boosted trees (SecureBoost, hidden membership, encrypted)",
    label_operations=("evaluate", "train"),
    default_operation="train",
)

#: The built-in kinds, in the order ``vfm agreement init`` lists them.
BUILTIN_JOB_KINDS: tuple[JobKind, ...] = (
    LOGISTIC,
    LINEAR,
    OVERLAP_KIND,
    SEGMENTS_KIND,
    SECUREBOOST_KIND,
)


def builtin_registry() -> JobRegistry:
    """A fresh registry holding the built-in kinds (add your own with ``register``)."""
    return JobRegistry(BUILTIN_JOB_KINDS)


@dataclass(frozen=True)
class RegressionParams:
    """The parameters of a regression job, typed (values come from the bound job only)."""

    max_iterations: int
    paillier_bits: int
    l2: float
    tol: float
    holdout_fraction: float
    holdout_seed: int
    early_stopping: int
    outcome: str
    junk_threshold: float

    @classmethod
    def from_job(cls, job: Job) -> RegressionParams:
        return cls(**{p.key: job[p.name] for p in REGRESSION_PARAMS})


@dataclass(frozen=True)
class OverlapParams:
    """The parameters of an overlap job, typed."""

    segment_party: str
    segment_column: str
    max_segments: int

    @classmethod
    def from_job(cls, job: Job) -> OverlapParams:
        params = cls(**{p.key: job[p.name] for p in OVERLAP_PARAMS})
        if bool(params.segment_party) != bool(params.segment_column):
            from vfm_flower.errors import ConfigurationError

            raise ConfigurationError(
                "overlap: set both segment-party and segment-column, or neither"
            )
        return params

    def check_holder(self, label_owner: str) -> None:
        """The label owner's own column never segments the overlap: it knows which of its
        customers hold each value, so exact counts per value would tell it whether they are
        shared (a value held by one customer: that customer's membership)."""
        if self.segment_party and self.segment_party == label_owner:
            from vfm_flower.errors import ConfigurationError

            raise ConfigurationError(
                f"overlap: the label owner's own column cannot segment the overlap (its counts "
                f"per value would tell '{label_owner}' which of its customers are shared): "
                "segment by a partner's column, or use the segments job after alignment"
            )


@dataclass(frozen=True)
class SegmentParams:
    """The parameters of a segment statistics job, typed; the target defaults resolved."""

    segment_party: str
    segment_column: str
    max_segments: int
    target_party: str
    target_column: str
    target_min: float
    target_max: float
    epsilon: float
    delta: float
    noise: str
    cross_party: str
    cross_column: str
    paillier_bits: int

    @classmethod
    def from_job(cls, job: Job, label_owner: str) -> SegmentParams:
        from vfm_flower.errors import ConfigurationError

        values = {p.key: job[p.name] for p in SEGMENTS_PARAMS}
        params = cls(**values)
        if not params.segment_party or not params.segment_column:
            raise ConfigurationError(
                "segments: name the segment column (segment-party and segment-column)"
            )
        if not params.target_party:
            object.__setattr__(params, "target_party", label_owner)
        if params.target_min >= params.target_max:
            raise ConfigurationError("segments: target-min must be below target-max")
        if params.epsilon == 0 and params.delta:
            raise ConfigurationError("segments: delta without epsilon (set epsilon for noise)")
        if bool(params.cross_party) != bool(params.cross_column):
            raise ConfigurationError("segments: set both cross-party and cross-column, or neither")
        if (params.cross_party, params.cross_column) == (
            params.segment_party,
            params.segment_column,
        ):
            raise ConfigurationError("segments: a column crossed with itself")
        return params

    @property
    def columns(self) -> list[tuple[str, str]]:
        """The segment column and, for a cross, the second one: ``(party, column)``."""
        out = [(self.segment_party, self.segment_column)]
        if self.cross_party:
            out.append((self.cross_party, self.cross_column))
        return out

    def aggregator(self, label_owner: str) -> str | None:
        """The partner that sums per value (the one holding a column; for a cross of two
        partners' columns, the cross column's), or ``None`` when the label owner holds every
        column."""
        passive = [p for p, _ in self.columns if p != label_owner]
        return passive[-1] if passive else None

    def splitter(self, label_owner: str) -> str | None:
        """For a cross of two partners' columns, the segment column's holder: it splits the
        encrypted streams per value of its column for the aggregator."""
        passive = [p for p, _ in self.columns if p != label_owner]
        return passive[0] if len(set(passive)) == 2 else None

    @property
    def noised(self) -> bool:
        return self.epsilon > 0


@dataclass(frozen=True)
class SecureBoostParams:
    """The parameters of a SecureBoost job, typed; :attr:`boosting` holds the model's."""

    boosting: BoostingParams
    min_node_rows: int
    paillier_bits: int
    holdout_fraction: float
    holdout_seed: int
    outcome: str
    junk_threshold: float

    @classmethod
    def from_job(cls, job: Job) -> SecureBoostParams:
        from vfm_flower.errors import ConfigurationError

        v = {p.key: job[p.name] for p in SECUREBOOST_PARAMS}
        classes = v["classes"] if v["objective"] == "multiclass" else 2
        if v["objective"] == "multiclass" and classes < 3:
            raise ConfigurationError(
                "secureboost: a multiclass objective needs classes >= 3 (binary for two)"
            )
        try:
            boosting = BoostingParams(
                objective=v["objective"],
                n_trees=v["trees"],
                max_depth=v["depth"],
                learning_rate=v["learning_rate"],
                n_bins=v["bins"],
                reg_lambda=v["lambda"],
                gamma=v["gamma"],
                min_child_weight=v["min_child_weight"],
                subsample=v["subsample"],
                colsample=v["colsample"],
                early_stopping=v["early_stopping"],
                n_classes=classes,
            )
        except ValueError as exc:
            raise ConfigurationError(f"secureboost: {exc}") from exc
        return cls(
            boosting,
            v["min_node_rows"],
            v["paillier_bits"],
            v["holdout_fraction"],
            v["holdout_seed"],
            v["outcome"],
            v["junk_threshold"],
        )
