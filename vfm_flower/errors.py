"""Exceptions of vfm-flower.

Every failure a user can cause has its own exception class with a message that says what
to fix. Protocol refusals carry the rule that refused (for the audit trail).
"""

from __future__ import annotations


class VfmError(Exception):
    """Base class of every error raised by vfm-flower."""


class ConfigurationError(VfmError):
    """A setting (node-config, run-config, CLI option) is missing or malformed."""


class DataError(VfmError):
    """A party's data cannot be used (unreadable file, bad column, duplicate ids...)."""


class KeyFileError(VfmError):
    """A key file is missing, malformed, or belongs to another party."""


class SignatureError(VfmError):
    """A signature does not verify."""


class EnvelopeError(VfmError):
    """A relayed envelope was refused: tampered, misdirected, replayed or unreadable."""


class PolicyViolation(VfmError):
    """A request breaks a term of the collaboration agreement.

    Parameters
    ----------
    rule : str
        The name of the agreement term that refused the request (e.g. ``"min_intersection"``).
    message : str
        What was refused and why.
    """

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"[{rule}] {message}")
        self.rule = rule


class ProtocolAbort(VfmError):
    """A phase was aborted: names the party and the phase that failed."""

    def __init__(self, phase: str, party: str | None, reason: str) -> None:
        who = f"party '{party}'" if party else "the job"
        super().__init__(f"phase '{phase}' aborted by {who}: {reason}")
        self.phase = phase
        self.party = party
        self.reason = reason


class PaillierKeyError(VfmError):
    """A Paillier key is missing, malformed, or does not match (e.g. decrypting without the
    private key, or a private key of another public key)."""


class CiphertextError(VfmError):
    """Ciphertexts were refused: malformed bytes, out of range for the key, too many, or a
    value bound that does not fit the plaintext space.

    Parameters
    ----------
    problem : str
        What was wrong: ``"header"``, ``"count"``, ``"length"``, ``"range"`` or ``"bound"``.
    message : str
        Details.
    """

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(f"[{problem}] {message}")
        self.problem = problem


class PayloadError(ProtocolAbort):
    """A payload received from a peer could not be decoded or has the wrong shape.

    Parameters
    ----------
    phase : str
        The step that received it.
    party : str
        The receiving party.
    sender : str
        The peer that sent it.
    topic : str
        What it was.
    reason : str
        What was wrong.
    """

    def __init__(self, phase: str, party: str | None, sender: str, topic: str, reason: str):
        super().__init__(phase, party, f"payload '{topic}' from '{sender}' refused: {reason}")
        self.sender = sender
        self.topic = topic
