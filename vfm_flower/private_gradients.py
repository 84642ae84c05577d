"""Private-gradient regression: passive weights, directions and gradients stay encrypted.

Who holds what
--------------
The label owner (LO) holds the labels, its own block (in plain) and the Paillier private key.
A passive party P_k holds its columns ``X_k`` (on all its rows: see
``vfm_flower.hidden_membership``), its block preconditioner (from its own columns) in plain,
and its weights ``x_k``, direction ``s_k`` and previous step ``p_k`` **encrypted under the
LO's key**. The optimizer is the one of ``vfm_flower.model`` (exact plane search by the LO,
exact sigmoid); only where each vector lives changes.

One iteration, two rounds
-------------------------
``passive round t`` (each P_k, :func:`passive_iteration`)
    It receives ``[[d / n_train]]`` by slot (zero on slots that are not joint and on held-out
    rows; the same vector for every passive party) and its moved state (below), from which
    it gets ``[[x]]`` and ``[[p]]`` (:func:`passive_state`). It computes ``[[g]] = X^T [[d]]``
    and the direction ``[[s]] = -M^{-1} ([[g]] + l2 [[x]])``, then the image ``[[X s]]``
    packed by slot with per-customer masks, the statistically masked
    ``[[x + R_x]], [[s + R_s]], [[p + R_p]]`` (packed) and six correction ciphertexts for the
    inner products of the L2 term (masked pairwise between passive parties). Every
    ciphertext it sends is re-randomized.
``LO round t`` (:mod:`vfm_flower.private_gradients_label_owner`: ``open_forward``, then
``backward_messages``)
    It adds the packed images of all passive parties slot by slot, decrypts, removes its
    masks on the joint slots, checks every count, size and range, and gets ``q = sum_k X_k s_k``
    on the joint rows; from the masked vectors and the corrections it gets the six inner
    products summed over passive parties. It runs the exact plane search for ``(a, b)``,
    computes the new residual ``d`` and sends each P_k ``[[d / n_train]]`` (encrypted afresh,
    by slot) and the move applied to the *masked* vectors, truncated to the base scale:
    ``W_x = T(U_x) + a T(U_s) + b T(U_p)``, ``W_p = a T(U_s) + b T(U_p)``, with ``[[a]]`` and
    ``[[b]]``. P_k removes ``T(R_x) + [[a]] T(R_s) + [[b]] T(R_p)`` under encryption: its new
    ``[[x]], [[p]]``, back on the base scale (one unit of rounding at most), and it never
    learns ``a`` or ``b``.

No passive party receives a plaintext that depends on labels other than the stop decision
(and, with early stopping, the index of the best round); the LO never returns a decryption
in plain, and a passive party that fabricates its image learns nothing from the reply but
ciphertexts.

Fixed point, and why these sizes
--------------------------------
Features ``2**-12`` (:data:`FEATURE_BITS`: the model is trained and scored on these quantized
values, so nothing drifts); state ``x, s, p`` ``2**-24`` after each refresh
(:data:`STATE_BITS`); coefficients ``2**-24`` (the LO quantizes ``a, b`` before it uses them, so
both sides apply the same move); residuals ``2**-36`` so that ``X^T d`` lands on the scale of
the moved ``x`` (``2**-48``); preconditioner entries ``2**-16``. Masks are ``40`` bits
(:data:`STATISTICAL_BITS`) above each public value bound: a masked value is within
statistical distance ``2**-40`` of uniform. The bounds (``|x|, |s|, |p| < 2**20``,
``|X s|, |X w| < 2**15``) are checked by the LO on what it decrypts; a diverging or deviating party
hits them and the job aborts with a named rule.

What the LO learns: the summed image ``q`` on joint rows at every iteration and the six
summed inner products, hence over many iterations the span of the passive columns on the
joint rows (with a few known rows, the columns themselves): inherent to any protocol where
the LO computes the exact loss, and listed in the README's leakage table.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from gmpy2 import mpz
from phe.paillier import PaillierPublicKey

from vfm_flower.errors import ProtocolAbort
from vfm_flower.hazmat import paillier_djn as _djn
from vfm_flower.hazmat import paillier_dot as _dot
from vfm_flower.hazmat import paillier_pack as _pack
from vfm_flower.hazmat.paillier_image import packed_row_images, signed_power_products, slots_for
from vfm_flower.hidden_membership import (
    LabelOwnerLayout,
    PassiveLayout,
    label_owner_slot_masks,
    pairwise_scalar_masks,
    passive_slot_masks,
)

__all__ = [
    "FEATURE_BITS",
    "STATE_BITS",
    "COEFFICIENT_BITS",
    "RESIDUAL_BITS",
    "PRECONDITIONER_BITS",
    "STATISTICAL_BITS",
    "PassiveControl",
    "Preconditioner",
    "ForwardMessage",
    "BackwardMessage",
    "PassiveSecrets",
    "quantize_features",
    "quantize_coefficient",
    "image_layout",
    "passive_iteration",
    "passive_final_image",
    "passive_state",
    "passive_obfuscators",
    "label_owner_obfuscators",
]

FEATURE_BITS = 12
STATE_BITS = 24
COEFFICIENT_BITS = 24
MOVED_BITS = STATE_BITS + COEFFICIENT_BITS  # scale of x, p after the move, and of X^T d
RESIDUAL_BITS = MOVED_BITS - FEATURE_BITS
PRECONDITIONER_BITS = 16
DIRECTION_BITS = MOVED_BITS + PRECONDITIONER_BITS
STATISTICAL_BITS = 40
#: |x|, |s|, |p| < 2**20 and |X s|, |X w| < 2**15 (checked on what the LO decrypts). The image
#: of a direction is about a projection of the residuals plus the L2 pull (a few units at
#: most); scores above 2**15 mean divergence. 15 bits make a slot 136 bits: 15 per ciphertext.
WEIGHT_MAGNITUDE_BITS = 20
IMAGE_MAGNITUDE_BITS = 15
#: |features| < 2**16 after preparation (standardized columns are far below).
FEATURE_MAGNITUDE_BITS = 16
N_SCALARS = 6
_PHASE = "training"


# --------------------------------------------------------------------------- plain helpers
def quantize_features(X: np.ndarray) -> np.ndarray:
    """``round(X * 2**12)`` as int64; refuses non-finite or huge values."""
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError("features must be a 2-D matrix")
    if not np.all(np.isfinite(arr)):
        raise ValueError("features hold NaN or infinite values")
    if arr.size and float(np.max(np.abs(arr))) >= 2.0**FEATURE_MAGNITUDE_BITS:
        raise ValueError(f"feature values must satisfy |x| < 2**{FEATURE_MAGNITUDE_BITS}")
    return np.rint(arr * 2.0**FEATURE_BITS).astype(np.int64)


def quantize_coefficient(value: float) -> int:
    """A step coefficient in fixed point (the LO uses ``q / 2**24`` itself)."""
    if not math.isfinite(value) or abs(value) >= 2.0**40:
        raise ProtocolAbort(_PHASE, None, "a step coefficient is not finite or too large")
    return int(round(value * 2.0**COEFFICIENT_BITS))


@dataclass(frozen=True)
class PassiveControl:
    """What a passive party learns from the LO each iteration: its index and whether training
    stops (both public to the server too); with ``stop``, ``best_round`` is the round whose
    weights are the final model (``-1``: the ones in this message). The step coefficients
    travel encrypted, inside the state."""

    iteration: int
    stop: bool = False
    best_round: int = -1

    def to_dict(self) -> dict[str, int | bool]:
        return {
            "iteration": int(self.iteration),
            "stop": bool(self.stop),
            "best_round": int(self.best_round),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PassiveControl:
        try:
            control = cls(
                iteration=int(data["iteration"]),  # type: ignore[arg-type]
                stop=bool(data["stop"]),
                best_round=int(data.get("best_round", -1)),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolAbort(_PHASE, None, f"malformed step control: {exc}") from exc
        if not 0 <= control.iteration < 1 << 31 or not -1 <= control.best_round < 1 << 31:
            raise ProtocolAbort(_PHASE, None, "the step control's iteration is out of range")
        return control


@dataclass(frozen=True)
class Preconditioner:
    """``A = -M^{-1}`` and ``B = -l2 M^{-1}`` in fixed point, from the party's own columns.

    ``M = c X^T X / rows + l2 I`` (``c = 1/4`` logistic, ``1`` linear) on all the party's rows:
    it involves no label and no membership.
    """

    A: np.ndarray
    B: np.ndarray

    @classmethod
    def from_features(cls, X_int: np.ndarray, curvature: float, l2: float) -> Preconditioner:
        X = np.asarray(X_int, dtype=np.float64) / 2.0**FEATURE_BITS
        rows, m = X.shape
        gram = curvature * (X.T @ X) / max(rows, 1) + l2 * np.eye(m)
        scale = float(np.trace(gram)) / max(m, 1) or 1.0
        jitter = 0.0
        for _ in range(12):
            try:
                inverse = np.linalg.inv(gram + jitter * scale * np.eye(m))
                np.linalg.cholesky(gram + jitter * scale * np.eye(m))
                break
            except np.linalg.LinAlgError:
                jitter = 1e-12 if jitter == 0.0 else jitter * 100.0
        else:  # pragma: no cover - only for degenerate columns
            raise ValueError("the party's columns give a singular preconditioner")
        factor = 2.0**PRECONDITIONER_BITS
        A = np.rint(-inverse * factor)
        B = np.rint(-l2 * inverse * factor)
        if float(np.max(np.abs(A))) >= 2.0**62:
            raise ValueError("the preconditioner is too ill-conditioned: raise l2")
        return cls(A.astype(np.int64), B.astype(np.int64))


# --------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class ForwardMessage:
    """P_k -> LO: packed masked image, packed masked vectors, six corrections."""

    image: tuple[mpz, ...]
    vectors: tuple[mpz, ...]
    corrections: tuple[mpz, ...]


@dataclass(frozen=True)
class BackwardMessage:
    """LO -> P_k: control, ``[[d / n_train]]`` by position, the moved masked state.

    ``state`` holds ``2 m + 2`` ciphertexts: ``[[W_x]]``, ``[[W_p]]`` (the moved weights and
    step, still carrying the party's masks) and ``[[a]]``, ``[[b]]`` (the step coefficients in
    fixed point), or nothing before the first round.
    """

    control: PassiveControl
    residuals: tuple[mpz, ...]
    state: tuple[mpz, ...]


@dataclass(frozen=True, repr=False)
class PassiveSecrets:
    """P_k's offsets of its last masked vectors (never leave the party)."""

    offsets: tuple[int, ...]

    def __repr__(self) -> str:
        return f"PassiveSecrets(count={len(self.offsets)})"


def image_layout(passive_parties: int, key_bits: int, value_bits: int) -> tuple[int, int, int]:
    """``(mask_bits, slot_bits, slots_per_ciphertext)`` of a packed image with that bound.

    A slot sums, per passive party, its value plus ``2**value_bits`` (in ``[0, 2**(v+1))``)
    and ``K`` masks of at most ``2**mask_bits`` each, ``mask_bits = v + 1 + 40``.
    """
    k = passive_parties
    mask_bits = value_bits + 1 + STATISTICAL_BITS
    slot_bits, spc = slots_for(mask_bits, 0, k * k + 1, key_bits)
    return mask_bits, slot_bits, spc


def _vector_layout(key_bits: int) -> tuple[int, int, int]:
    value_bits = DIRECTION_BITS + WEIGHT_MAGNITUDE_BITS
    return (
        value_bits,
        value_bits + STATISTICAL_BITS + 2,
        (key_bits - 1) // (value_bits + STATISTICAL_BITS + 2),
    )


def _ciphertexts_needed(total_slots: int, spc: int) -> int:
    return -(-total_slots // spc)


def _add_plain(cts: Sequence[mpz], values: Sequence[int], n: mpz, n2: mpz) -> list[mpz]:
    return _djn.add_plaintexts([mpz(v) % n for v in values], list(cts), n, n2)


def _rerandomize(encryptor: _djn.DJNEncryptor, cts: Sequence[mpz], n2: mpz) -> list[mpz]:
    obfuscators = encryptor.take_obfuscators(len(cts))
    return [c * o % n2 for c, o in zip(cts, obfuscators, strict=True)]


def _masked_image(
    public: PaillierPublicKey,
    encryptor: _djn.DJNEncryptor,
    bases: Sequence[mpz],
    X_int: np.ndarray,
    layout: PassiveLayout,
    masks: Sequence[int],
    value_bits: int,
    passive_parties: int,
) -> list[mpz]:
    n = mpz(public.n)
    n2 = n * n
    _, slot_bits, spc = image_layout(passive_parties, n.bit_length(), value_bits)
    count = _ciphertexts_needed(layout.total_slots, spc)
    image = packed_row_images(
        bases,
        X_int,
        layout.slot_of_row,
        slot_bits=slot_bits,
        slots_per_ciphertext=spc,
        ciphertexts=count,
        nsquare=n2,
    )
    plain = [0] * count
    offset = 1 << value_bits
    for row, slot in enumerate(layout.slot_of_row):
        slot = int(slot)
        plain[slot // spc] += (offset + masks[row]) << (slot_bits * (slot % spc))
    return _rerandomize(encryptor, _add_plain(image, plain, n, n2), n2)


# --------------------------------------------------------------------------- passive side
def passive_iteration(
    public: PaillierPublicKey,
    encryptor: _djn.DJNEncryptor,
    X_int: np.ndarray,
    preconditioner: Preconditioner,
    layout: PassiveLayout,
    message: BackwardMessage,
    secrets_prev: PassiveSecrets | None,
    *,
    slot_masks: Sequence[int],
    scalar_masks: Sequence[int],
    passive_parties: int,
) -> tuple[ForwardMessage, PassiveSecrets, list[mpz]]:
    """One passive round: gradient, direction, masked image, masked vectors and corrections.

    Returns the message for the LO, the new secrets and the current point ``[[x]]`` (kept for
    early stopping).
    """
    n = mpz(public.n)
    n2 = n * n
    m = X_int.shape[1]
    x, p = passive_state(public, message, secrets_prev, m)
    # the gradient and the direction   (X^T d and x on 2**-48; s on 2**-64)
    if len(message.residuals) != layout.total_slots:
        raise ProtocolAbort(_PHASE, None, "the residuals do not cover every slot")
    residuals = [message.residuals[int(slot)] for slot in layout.slot_of_row]
    gradient = _dot.encrypted_dot_products(residuals, X_int, n2)
    direction = signed_power_products(
        [*gradient, *x], np.hstack([preconditioner.A, preconditioner.B]), n2
    )
    image = _masked_image(
        public,
        encryptor,
        direction,
        X_int,
        layout,
        slot_masks,
        iteration_image_bits(),
        passive_parties,
    )
    vectors, offsets = _masked_vectors(encryptor, [*x, *direction, *p], n, n2)
    corrections = _corrections(encryptor, x, direction, p, offsets, scalar_masks, n, n2)
    return (
        ForwardMessage(tuple(image), tuple(vectors), tuple(corrections)),
        PassiveSecrets(tuple(offsets)),
        x,
    )


def passive_state(
    public: PaillierPublicKey,
    message: BackwardMessage,
    secrets_prev: PassiveSecrets | None,
    m: int,
) -> tuple[list[mpz], list[mpz]]:
    """``[[x]], [[p]]`` (scale ``2**-48``) from the LO's moved masked state.

    The LO sent ``W_x = T(U_x) + a T(U_s) + b T(U_p)`` and ``W_p = a T(U_s) + b T(U_p)``, where
    ``U = v + R`` are the masked vectors of the last round and ``T`` truncates to ``2**-24``;
    the party removes ``T(R_x)``, ``[[a]] T(R_s)`` and ``[[b]] T(R_p)`` under encryption, so
    it never learns ``a`` or ``b`` (one unit of rounding at most).
    """
    n = mpz(public.n)
    n2 = n * n
    state = message.state
    if not state:
        if secrets_prev is not None:
            raise ProtocolAbort(_PHASE, None, "the moved weights are missing")
        zero = [mpz(1)] * m  # trivial encryptions of zero; every output is re-randomized
        return zero, list(zero)
    if secrets_prev is None or len(state) != 2 * m + 2 or len(secrets_prev.offsets) != 3 * m:
        raise ProtocolAbort(_PHASE, None, f"expected {2 * m + 2} moved-state ciphertexts")
    r_x, r_s, r_p = (
        secrets_prev.offsets[:m],
        secrets_prev.offsets[m : 2 * m],
        secrets_prev.offsets[2 * m :],
    )
    a_ct, b_ct = state[2 * m], state[2 * m + 1]
    shift_s = DIRECTION_BITS - MOVED_BITS + COEFFICIENT_BITS
    corrections = signed_power_products(
        [a_ct, b_ct],
        [[-(rs >> shift_s), -(rp >> COEFFICIENT_BITS)] for rs, rp in zip(r_s, r_p)],
        n2,
    )
    p = [w * c % n2 for w, c in zip(state[m : 2 * m], corrections)]
    minus_x = [-((r >> COEFFICIENT_BITS) << COEFFICIENT_BITS) for r in r_x]
    x = [w * c % n2 for w, c in zip(_add_plain(state[:m], minus_x, n, n2), corrections)]
    return x, p


def passive_final_image(
    public: PaillierPublicKey,
    encryptor: _djn.DJNEncryptor,
    weights: Sequence[mpz],
    X_int: np.ndarray,
    layout: PassiveLayout,
    *,
    slot_masks: Sequence[int],
    passive_parties: int,
) -> list[mpz]:
    """``[[X w]]`` of the encrypted model ``w`` (``2**-48``), packed and masked, for the LO."""
    return _masked_image(
        public,
        encryptor,
        list(weights),
        X_int,
        layout,
        slot_masks,
        final_image_bits(),
        passive_parties,
    )


def final_image_bits() -> int:
    """Public bound (bits) of the image of a final model ``[[X w]]`` (scale ``2**-60``)."""
    return MOVED_BITS + FEATURE_BITS + IMAGE_MAGNITUDE_BITS


def iteration_image_bits() -> int:
    """Public bound (bits) of the image of a direction ``[[X s]]`` (scale ``2**-76``)."""
    return DIRECTION_BITS + FEATURE_BITS + IMAGE_MAGNITUDE_BITS


def passive_obfuscators(
    total_slots: int, features: int, passive_parties: int, key_bits: int
) -> int:
    """Re-randomizations in a passive party's next message: the image of an iteration's
    direction or of the final model (the larger), the packed vectors and the corrections.

    A party computes them ahead (``train.precompute``, while the LO works) so that its own
    round starts without them.
    """
    images = max(
        _ciphertexts_needed(total_slots, image_layout(passive_parties, key_bits, bits)[2])
        for bits in (iteration_image_bits(), final_image_bits())
    )
    vectors = _ciphertexts_needed(3 * features, _vector_layout(key_bits)[2])
    return images + vectors + N_SCALARS


def label_owner_obfuscators(layout: LabelOwnerLayout, features: Mapping[str, int]) -> int:
    """Encryptions in one LO backward message: the residuals by slot and each passive party's
    moved state (``2 m + 2``). Computed ahead while the passive parties work."""
    return layout.total_slots + sum(2 * m + 2 for m in features.values())


def _masked_vectors(
    encryptor: _djn.DJNEncryptor, cts: Sequence[mpz], n: mpz, n2: mpz
) -> tuple[list[mpz], list[int]]:
    """``[[v + R]]`` packed, ``R = 2**V + rho``, ``rho`` uniform below ``2**(V + 40)``."""
    value_bits, slot_bits, spc = _vector_layout(n.bit_length())
    offsets = [(1 << value_bits) + secrets.randbits(value_bits + STATISTICAL_BITS) for _ in cts]
    masked = _add_plain(cts, offsets, n, n2)
    packed = _pack.pack_ciphertexts(masked, n2, slot_bits=slot_bits, slots_per_ciphertext=spc)
    return _rerandomize(encryptor, packed, n2), offsets


def _corrections(
    encryptor: _djn.DJNEncryptor,
    x: Sequence[mpz],
    s: Sequence[mpz],
    p: Sequence[mpz],
    offsets: Sequence[int],
    scalar_masks: Sequence[int],
    n: mpz,
    n2: mpz,
) -> list[mpz]:
    """``[[R_a . b + R_b . a + R_a . R_b]]`` for the six pairs (xx, xs, xp, ss, sp, pp)."""
    m = len(x)
    vec = {"x": list(x), "s": list(s), "p": list(p)}
    off = {"x": offsets[:m], "s": offsets[m : 2 * m], "p": offsets[2 * m :]}
    out = []
    for a, b in (("x", "x"), ("x", "s"), ("x", "p"), ("s", "s"), ("s", "p"), ("p", "p")):
        exps = [[*off[b], *off[a]]]
        ct = signed_power_products([*vec[a], *vec[b]], exps, n2)[0] if m else mpz(1)
        plain = sum(ra * rb for ra, rb in zip(off[a], off[b]))
        out.append(ct * (1 + (plain % n) * n) % n2)
    masked = _add_plain(out, scalar_masks, n, n2)
    return _rerandomize(encryptor, masked, n2)


def joint_masks(
    seeds: Mapping[str, bytes],
    passives: Sequence[str],
    joint_tokens: Sequence[bytes],
    label: str,
    value_bits: int,
    key_bits: int,
) -> list[int]:
    """The LO's per-joint-slot mask total for an image of that bound."""
    mask_bits, _, _ = image_layout(len(passives), key_bits, value_bits)
    return label_owner_slot_masks(seeds, passives, joint_tokens, label, mask_bits)


def row_masks(
    party: str,
    label_owner: str,
    seeds: Mapping[str, bytes],
    passives: Sequence[str],
    tokens: Sequence[bytes],
    label: str,
    value_bits: int,
    key_bits: int,
) -> list[int]:
    """P_k's per-row mask total for an image of that bound."""
    mask_bits, _, _ = image_layout(len(passives), key_bits, value_bits)
    return passive_slot_masks(party, label_owner, seeds, passives, tokens, label, mask_bits)


def scalar_masks(
    party: str, seeds: Mapping[str, bytes], passives: Sequence[str], label: str, n: int
) -> list[int]:
    """P_k's pairwise masks of its six correction scalars."""
    return pairwise_scalar_masks(party, seeds, passives, label, N_SCALARS, n)


# --------------------------------------------------------------------------- opt-in release
def masked_weights(
    public: PaillierPublicKey, encryptor: _djn.DJNEncryptor, weights: Sequence[mpz]
) -> tuple[list[mpz], list[int]]:
    """P_k: ``[[w + R]]`` (``R = 2**V + rho``, ``rho`` below ``2**(V + 40)``) for the LO to
    decrypt when the agreement releases the weights to their owner."""
    n = mpz(public.n)
    n2 = n * n
    value_bits = MOVED_BITS + WEIGHT_MAGNITUDE_BITS
    offsets = [(1 << value_bits) + secrets.randbits(value_bits + STATISTICAL_BITS) for _ in weights]
    return _rerandomize(encryptor, _add_plain(list(weights), offsets, n, n2), n2), offsets


def masked_values_payload(values: Sequence[int]) -> bytes:
    return b"".join(int(v).to_bytes(32, "big") for v in values)


def masked_values_from_payload(blob: bytes, count: int) -> list[int]:
    if len(blob) != 32 * count:
        raise ValueError(f"{len(blob)} bytes for {count} masked weights")
    return [int.from_bytes(blob[i : i + 32], "big") for i in range(0, len(blob), 32)]


def unmask_weights(values: Sequence[int], offsets: Sequence[int]) -> np.ndarray:
    """P_k: its plaintext weights ``(w + R) - R``, checked against their public bound."""
    bound = 1 << (MOVED_BITS + WEIGHT_MAGNITUDE_BITS)
    out = []
    for v, r in zip(values, offsets, strict=True):
        w = int(v) - int(r)
        if not -bound < w < bound:
            raise ValueError("a released weight is outside its public bound")
        out.append(w / 2.0**MOVED_BITS)
    return np.array(out, dtype=np.float64)
