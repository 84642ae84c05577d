"""vfm-flower: vertical federated learning for marketing collaborations, on Flower.

The public API, for a Flower team writing its own vertical job:

- job layer (no Flower import): :class:`JobKind`, :class:`ParamSpec`, :class:`Job`,
  :class:`JobRegistry`, :class:`JobTerms`, :class:`PartyContext`, :class:`Topic`,
  :class:`PaillierContext`, :func:`pack_payload` / :func:`unpack_payload`, the errors;
- server side: :func:`vertical_session` / :class:`VerticalSession` inside your own
  ``@app.main()``; client side: :class:`VerticalClientApp` (steps bound to job kinds) or
  :func:`vertical_mod` around your own handlers. These import Flower, so they load on first
  use (``from vfm_flower import VerticalClientApp``): importing ``vfm_flower`` alone does not.

Layers: the Flower-free core (``vfm_flower/*``: PSI, envelopes, masking, Paillier, agreement,
policy, audit, model math, report) and job layer (``jobs``, ``context``, ``party``), then the
Flower adapters ``vfm_flower.strategies`` (server) and ``vfm_flower.clients`` (parties), with
``vfm_flower.runtime`` (wire format, in-process runner) and the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vfm_flower.agreement import JobTerms, SignedAgreement, init_agreement
from vfm_flower.codec import pack_payload, unpack_payload
from vfm_flower.context import PartyContext, Topic
from vfm_flower.errors import (
    ConfigurationError,
    DataError,
    EnvelopeError,
    PolicyViolation,
    ProtocolAbort,
    VfmError,
)
from vfm_flower.jobs import Job, JobKind, JobRegistry, ParamSpec
from vfm_flower.jobs_builtin import BUILTIN_JOB_KINDS, LINEAR, LOGISTIC
from vfm_flower.keys import PartyIdentity

if TYPE_CHECKING:  # pragma: no cover
    from vfm_flower.clients.app import VerticalClientApp
    from vfm_flower.clients.mod import vertical_mod
    from vfm_flower.paillier import PaillierContext
    from vfm_flower.strategies.session import VerticalSession, vertical_session

__version__ = "0.2.0"

_LAZY = {
    "VerticalClientApp": "vfm_flower.clients.app",
    "vertical_mod": "vfm_flower.clients.mod",
    "VerticalSession": "vfm_flower.strategies.session",
    "vertical_session": "vfm_flower.strategies.session",
    "PaillierContext": "vfm_flower.paillier",
}

__all__ = [
    "BUILTIN_JOB_KINDS",
    "LINEAR",
    "LOGISTIC",
    "ConfigurationError",
    "DataError",
    "EnvelopeError",
    "Job",
    "JobKind",
    "JobRegistry",
    "JobTerms",
    "PaillierContext",
    "ParamSpec",
    "PartyContext",
    "PartyIdentity",
    "PolicyViolation",
    "ProtocolAbort",
    "SignedAgreement",
    "Topic",
    "VerticalClientApp",
    "VerticalSession",
    "VfmError",
    "init_agreement",
    "pack_payload",
    "unpack_payload",
    "vertical_mod",
    "vertical_session",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vfm_flower' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
