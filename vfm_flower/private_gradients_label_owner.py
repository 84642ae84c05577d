"""Private-gradient regression, the label owner's side: open a passive round, send the next.

The protocol, who holds what and the fixed-point sizes are described in
:mod:`vfm_flower.private_gradients` (the passive parties' side and what both share). Here the
label owner (LO), which holds the Paillier private key, sums the passive parties' packed
images slot by slot and decrypts them (:func:`open_image`), reads the six masked inner
products and every party's masked state (:func:`open_forward`), checks every count, size and
range on what it decrypts (a deviating party ends the job with a named rule), and encrypts
the residuals by slot and the moved masked state for the next passive round
(:func:`backward_messages`). The LO never returns a decryption in plain: what leaves it is
ciphertexts under its key, and, when the agreement releases the weights to their owner, the
statistically masked values ``w + R`` (:func:`open_masked_weights`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from gmpy2 import mpz
from phe.paillier import PaillierPrivateKey, PaillierPublicKey

from vfm_flower.errors import ProtocolAbort
from vfm_flower.hazmat import paillier_djn as _djn
from vfm_flower.hazmat import paillier_pack as _pack
from vfm_flower.hidden_membership import LabelOwnerLayout
from vfm_flower.private_gradients import (
    _PHASE,
    COEFFICIENT_BITS,
    DIRECTION_BITS,
    FEATURE_BITS,
    MOVED_BITS,
    N_SCALARS,
    RESIDUAL_BITS,
    WEIGHT_MAGNITUDE_BITS,
    BackwardMessage,
    ForwardMessage,
    PassiveControl,
    _ciphertexts_needed,
    _vector_layout,
    image_layout,
    iteration_image_bits,
)

__all__ = [
    "OpenedForward",
    "open_image",
    "open_forward",
    "backward_messages",
    "open_masked_weights",
]


@dataclass(frozen=True)
class OpenedForward:
    """What the LO reads from one passive round."""

    image: np.ndarray  # sum_k X_k s_k on the joint rows (floats)
    scalars: np.ndarray  # the six inner products summed over passive parties
    vectors: dict[str, list[int]]  # masked x, s, p of each party (for the refresh)


def _decrypt_packed(
    private: PaillierPrivateKey, cts: Sequence[mpz], slot_bits: int, spc: int, count: int
) -> list[int]:
    n = int(private.public_key.n)
    plain = [v % n for v in _djn.decrypt_vector(private, cts)]
    out: list[int] = []
    for value in plain:
        out.extend(_pack.unpack_plaintext(value, slot_bits=slot_bits, count=spc))
    return out[:count]


def _refuse(party: str | None, why: str) -> ProtocolAbort:
    return ProtocolAbort(_PHASE, party, why)


def open_image(
    private: PaillierPrivateKey,
    images: Mapping[str, Sequence[mpz]],
    layout: LabelOwnerLayout,
    masks: Sequence[int],
    value_bits: int,
    scale_bits: int,
) -> np.ndarray:
    """Sum the passive parties' packed images slot by slot, decrypt, read the joint slots.

    Raises
    ------
    ProtocolAbort
        A party sent another number of ciphertexts, or a joint value is out of its bound.
    """
    n = mpz(private.public_key.n)
    n2 = n * n
    k = len(images)
    _, slot_bits, spc = image_layout(k, n.bit_length(), value_bits)
    count = _ciphertexts_needed(layout.total_slots, spc)
    total = [mpz(1)] * count
    for party, cts in images.items():
        if len(cts) != count:
            raise _refuse(
                party,
                f"[payload_count] party '{party}' sent {len(cts)} image ciphertexts, the step "
                f"carries {count}",
            )
        total = [t * c % n2 for t, c in zip(total, cts)]
    try:
        slots = _decrypt_packed(private, total, slot_bits, spc, count * spc)
    except ValueError as exc:
        raise _refuse(
            None,
            "[image_range] a packed image does not fit its slots: a passive party deviated",
        ) from exc
    offset = k << value_bits
    bound = 1 << value_bits
    out = np.empty(layout.joint_slots.size)
    for j, slot in enumerate(layout.joint_slots):
        value = slots[int(slot)] - masks[j] - offset
        if not -bound < value < bound:
            raise _refuse(
                None,
                "[image_range] a decrypted image is outside its public bound: a passive "
                "party deviated or the model diverges (raise l2)",
            )
        out[j] = value / 2.0**scale_bits
    return out


def open_forward(
    private: PaillierPrivateKey,
    messages: Mapping[str, ForwardMessage],
    layout: LabelOwnerLayout,
    features: Mapping[str, int],
    masks: Sequence[int],
) -> OpenedForward:
    """LO: the summed image, the six summed inner products and every party's masked vectors."""
    n = mpz(private.public_key.n)
    n2 = n * n
    value_bits, slot_bits, spc = _vector_layout(n.bit_length())
    image = open_image(
        private,
        {p: msg.image for p, msg in messages.items()},
        layout,
        masks,
        iteration_image_bits(),
        DIRECTION_BITS + FEATURE_BITS,
    )
    vectors: dict[str, list[int]] = {}
    products = [0] * N_SCALARS
    correction = [mpz(1)] * N_SCALARS
    for party, msg in messages.items():
        m = features[party]
        expected = _ciphertexts_needed(3 * m, spc)
        if len(msg.vectors) != expected or len(msg.corrections) != N_SCALARS:
            raise _refuse(
                party,
                f"[payload_count] party '{party}' sent {len(msg.vectors)} vector and "
                f"{len(msg.corrections)} correction ciphertexts, the step carries {expected} "
                f"and {N_SCALARS}",
            )
        try:
            values = _decrypt_packed(private, msg.vectors, slot_bits, spc, 3 * m)
        except ValueError as exc:
            raise _refuse(
                party,
                f"[payload_range] party '{party}' sent masked vectors that do not fit their slots",
            ) from exc
        vectors[party] = values
        x, s, p = values[:m], values[m : 2 * m], values[2 * m :]
        for i, (a, b) in enumerate(((x, x), (x, s), (x, p), (s, s), (s, p), (p, p))):
            products[i] += sum(u * v for u, v in zip(a, b))
        correction = [a * b % n2 for a, b in zip(correction, msg.corrections)]
    corrections = _djn.decrypt_vector(private, correction)
    scales = (
        2 * MOVED_BITS,
        MOVED_BITS + DIRECTION_BITS,
        2 * MOVED_BITS,
        2 * DIRECTION_BITS,
        DIRECTION_BITS + MOVED_BITS,
        2 * MOVED_BITS,
    )
    scalars = np.array(
        [(pr - c) / 2.0**sc for pr, c, sc in zip(products, corrections, scales)],
        dtype=np.float64,
    )
    limit = 2.0 ** (2 * WEIGHT_MAGNITUDE_BITS)
    if (
        not np.all(np.isfinite(scalars))
        or max(scalars[0], scalars[3], scalars[5]) >= limit
        or min(scalars[0], scalars[3], scalars[5]) < -1e-6
    ):
        raise _refuse(
            None,
            "[weight_range] the passive weights left their public bound: a party deviated or "
            "the model diverges (raise l2)",
        )
    return OpenedForward(image=image, scalars=scalars, vectors=vectors)


def _encrypt(
    encryptor: _djn.DJNEncryptor, public: PaillierPublicKey, values: Sequence[int]
) -> list[mpz]:
    return _djn.encrypt_vector(
        public, np.array([int(v) for v in values], dtype=object), encryptor=encryptor
    )


def backward_messages(
    encryptor: _djn.DJNEncryptor,
    public: PaillierPublicKey,
    backward: np.ndarray | None,
    layout: LabelOwnerLayout,
    control: PassiveControl,
    opened: OpenedForward | None,
    step: int = 0,
    momentum: int = 0,
) -> dict[str, BackwardMessage]:
    """LO: ``[[d / n_train]]`` by slot (zeros elsewhere) and the moved masked state.

    ``step``/``momentum`` are the coefficients ``a, b`` in fixed point (``2**-24``): the LO
    applies the move ``x += a s + b p`` to the masked vectors it opened (after truncating them
    to ``2**-24``), and sends ``[[a]], [[b]]`` so that the party can remove its masks' share.
    """
    out = {}
    residuals: list[mpz] = []
    if backward is not None:
        # one vector for every passive party, by slot: d on the joint slots, zero elsewhere
        # (two parties that compare theirs learn nothing their slot maps do not tell them)
        values = [0] * layout.total_slots
        quantized = np.rint(np.asarray(backward, dtype=np.float64) * 2.0**RESIDUAL_BITS)
        for slot, value in zip(layout.joint_slots, quantized):
            values[int(slot)] = int(value)
        residuals = _encrypt(encryptor, public, values)
    shift_s = DIRECTION_BITS - MOVED_BITS + COEFFICIENT_BITS
    for party in layout.slot_maps:
        state: list[mpz] = []
        if opened is not None:
            masked = opened.vectors[party]
            m = len(masked) // 3
            u_x, u_s, u_p = masked[:m], masked[m : 2 * m], masked[2 * m :]
            moves = [
                step * (us >> shift_s) + momentum * (up >> COEFFICIENT_BITS)
                for us, up in zip(u_s, u_p)
            ]
            w_x = [
                ((ux >> COEFFICIENT_BITS) << COEFFICIENT_BITS) + mv for ux, mv in zip(u_x, moves)
            ]
            state = _encrypt(encryptor, public, [*w_x, *moves, step, momentum])
        out[party] = BackwardMessage(control, tuple(residuals), tuple(state))
    return out


def open_masked_weights(private: PaillierPrivateKey, cts: Sequence[mpz]) -> list[int]:
    """LO: the masked values ``w + R`` (statistically hiding ``w``)."""
    n = int(private.public_key.n)
    return [v % n for v in _djn.decrypt_vector(private, cts)]
