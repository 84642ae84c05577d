"""Hidden membership: passive parties compute on all their rows and never learn which are joint.

After ECDH-PSI (``vfm_flower.psi``) the label owner (LO, the hub) knows, for every passive
party P_k, the positions of the joint customers in P_k's secretly shuffled list; P_k knows
nothing about the match. Instead of those positions, the LO sends P_k a **slot map**: a slot
``sigma_k(pos)`` in ``[0, L)`` for every one of its ``N_k`` rows (``L = max_k N_k``). Joint
customers get the same slot at every passive party (random slots ``tau(c)``), the other rows
random free slots. For P_k alone, ``sigma_k`` is a uniformly random injection whatever its
membership, so it reveals only ``N_k`` and ``L`` (both already known from the signed hellos).

Passive parties then send vectors laid out by slot (packed Paillier images, see
``vfm_flower.private_gradients``) and the LO sends them vectors by position (encrypted
residuals, with encryptions of zero on rows that are not joint or are held out). The LO adds
the passive parties' packed vectors slot by slot and reads only the joint slots.

Per-customer masks make the other slots unreadable. Each slot value carries

* a mask shared by P_k and the LO, a PRF of the customer (``customer_tokens``): the LO can
  remove it only for customers it holds;
* for every other passive party P_j, a mask shared by P_j and P_k on the same customer, added
  as ``m`` by one side and ``2**bits - m`` by the other: the two cancel (to the public constant
  ``2**bits``) only in a slot where both parties put that same customer.

So the LO reads ``sum_k v_k(c)`` on joint slots and nothing else: one party's value hides
behind the masks shared with the other passive parties, a non-joint row behind the LO mask
(and, with two or more passive parties, the pair masks). The PRF is keyed BLAKE2b (a PRF by
design, RFC 7693) under the pairwise seeds of ``vfm_flower.masking`` (X25519 + HKDF, new per
run); the label binds every use, and a label is never used twice.

What a collusion reveals: two passive parties together see which of their common customers
got equal slots, that is which of them are joint. The LO learns which customers are joint (as
the PSI hub) and could remove its masks for guessed ids, which tells it no more than adding
those ids to its own PSI input would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from vfm_flower.errors import DataError
from vfm_flower.psi import secure_permutation

__all__ = [
    "TOKEN_BYTES",
    "LabelOwnerLayout",
    "PassiveLayout",
    "build_layouts",
    "passive_layout",
    "customer_tokens",
    "customer_masks",
    "passive_slot_masks",
    "label_owner_slot_masks",
    "pairwise_scalar_masks",
]

TOKEN_BYTES = 32
_TOKEN_PERSON = b"vfm-customer-tok"
_MASK_PERSON = b"vfm-customer-msk"
_SCALAR_PERSON = b"vfm-scalar-mask"


@dataclass(frozen=True)
class LabelOwnerLayout:
    """The LO's view: joint customers' slots, and every passive party's slot map.

    Attributes
    ----------
    total_slots : int
        ``L = max_k N_k``.
    joint_slots : numpy.ndarray
        Slot of joint customer ``j`` (common order), int64.
    positions : dict of str to numpy.ndarray
        ``positions[k][j]``: position of joint customer ``j`` in P_k's shuffled list.
    slot_maps : dict of str to numpy.ndarray
        ``slot_maps[k][pos]``: slot of P_k's row at shuffled position ``pos`` (sent to P_k).
    """

    total_slots: int
    joint_slots: np.ndarray
    positions: dict[str, np.ndarray]
    slot_maps: dict[str, np.ndarray]


@dataclass(frozen=True)
class PassiveLayout:
    """A passive party's view: a slot for each of its own rows, nothing about membership.

    Attributes
    ----------
    total_slots : int
        ``L``.
    slot_of_row : numpy.ndarray
        Slot of each of the party's rows (its own row order), int64.
    row_of_position : numpy.ndarray
        The party's secret PSI permutation: its row at each shuffled position (vectors from
        the LO come in position order).
    """

    total_slots: int
    slot_of_row: np.ndarray
    row_of_position: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.slot_of_row.size)


def build_layouts(
    joint_positions: Mapping[str, np.ndarray], rows: Mapping[str, int]
) -> LabelOwnerLayout:
    """LO: draw the slot maps (OS randomness) from the joint positions of each passive party.

    Parameters
    ----------
    joint_positions : mapping of str to numpy.ndarray
        ``psi.JointAlignment.passive_positions``.
    rows : mapping of str to int
        ``N_k``: the number of ids each passive party sent.
    """
    if set(joint_positions) != set(rows) or not rows:
        raise DataError("slot maps need the joint positions and the size of every passive party")
    total = max(int(v) for v in rows.values())
    n_joint = {int(np.asarray(p).size) for p in joint_positions.values()}
    if len(n_joint) != 1:
        raise DataError("every passive party must hold the same joint customers")
    (n,) = n_joint
    slots = secure_permutation(total)
    joint_slots = slots[:n].astype(np.int64)
    free = slots[n:]
    maps: dict[str, np.ndarray] = {}
    for party, size in rows.items():
        pos = np.asarray(joint_positions[party], dtype=np.int64)
        if pos.size and (int(pos.min()) < 0 or int(pos.max()) >= size):
            raise DataError(f"joint positions of '{party}' are out of range")
        slot_map = np.full(int(size), -1, dtype=np.int64)
        slot_map[pos] = joint_slots
        others = np.flatnonzero(slot_map < 0)
        # a fresh uniformly random choice of free slots for this party's other rows
        chosen = free[secure_permutation(free.size)[: others.size]]
        slot_map[others] = chosen
        maps[party] = slot_map
    return LabelOwnerLayout(
        total_slots=total,
        joint_slots=joint_slots,
        positions={k: np.asarray(v, dtype=np.int64) for k, v in joint_positions.items()},
        slot_maps=maps,
    )


def passive_layout(
    slot_map: np.ndarray, permutation: np.ndarray, total_slots: int
) -> PassiveLayout:
    """P_k: check the LO's slot map and turn it into a slot per own row.

    Raises
    ------
    DataError
        A slot map of the wrong length, out of range or with a repeated slot.
    """
    slots = np.asarray(slot_map)
    perm = np.asarray(permutation, dtype=np.int64)
    if slots.ndim != 1 or not np.issubdtype(slots.dtype, np.integer) or slots.size != perm.size:
        raise DataError(f"the slot map must hold one slot for each of the {perm.size} rows sent")
    if total_slots < perm.size:
        raise DataError("the slot map has fewer slots than this party has rows")
    if slots.size and (int(slots.min()) < 0 or int(slots.max()) >= total_slots):
        raise DataError("the slot map holds a slot out of range")
    if np.unique(slots).size != slots.size:
        raise DataError("the slot map repeats a slot")
    slot_of_row = np.empty(perm.size, dtype=np.int64)
    slot_of_row[perm] = slots.astype(np.int64)
    return PassiveLayout(int(total_slots), slot_of_row, perm)


def customer_tokens(ids: Sequence[str], domain: bytes) -> list[bytes]:
    """A per-run pseudonym of each normalized id (BLAKE2b), the input of the customer masks.

    Kept instead of the ids in a party's state; the same customer gets the same token at every
    party of the run (``domain`` binds the agreement and the run key).
    """
    key = hashlib.blake2b(domain, digest_size=32, person=_TOKEN_PERSON).digest()
    return [
        hashlib.blake2b(i.encode(), key=key, digest_size=TOKEN_BYTES, person=_TOKEN_PERSON).digest()
        for i in ids
    ]


def customer_masks(seed: bytes, label: str, tokens: Sequence[bytes], bits: int) -> list[int]:
    """The pair's mask of each customer for one label: uniform ``bits``-bit integers."""
    if not 1 <= bits <= 504:
        raise ValueError("customer masks are 1 to 504 bits")
    if not label:
        raise ValueError("a mask label must be a non-empty string")
    key = hashlib.blake2b(
        label.encode(), key=bytes(seed), digest_size=64, person=_MASK_PERSON
    ).digest()
    size = (bits + 7) // 8
    drop = 8 * size - bits
    out = []
    for token in tokens:
        block = hashlib.blake2b(token, key=key, digest_size=64, person=_MASK_PERSON).digest()
        out.append(int.from_bytes(block[:size], "big") >> drop)
    return out


def passive_slot_masks(
    party: str,
    label_owner: str,
    seeds: Mapping[str, bytes],
    passives: Sequence[str],
    tokens: Sequence[bytes],
    label: str,
    bits: int,
) -> list[int]:
    """P_k's mask of each of its rows: the LO mask plus one pair mask per other passive party.

    Every term is in ``[0, 2**bits]``; the sum of ``len(passives)`` terms per party.
    """
    total = customer_masks(seeds[label_owner], f"lo/{label}", tokens, bits)
    full = 1 << bits
    for peer in passives:
        if peer == party:
            continue
        low, high = sorted((party, peer))
        pair = customer_masks(seeds[peer], f"pair/{low}/{high}/{label}", tokens, bits)
        if party == low:
            total = [t + m for t, m in zip(total, pair)]
        else:
            total = [t + full - m for t, m in zip(total, pair)]
    return total


def label_owner_slot_masks(
    seeds: Mapping[str, bytes],
    passives: Sequence[str],
    joint_tokens: Sequence[bytes],
    label: str,
    bits: int,
) -> list[int]:
    """What the LO subtracts from each joint slot: its masks with every passive party plus
    ``2**bits`` per pair of passive parties (a cancelled pair leaves that constant)."""
    pairs = len(passives) * (len(passives) - 1) // 2
    total = [pairs << bits] * len(joint_tokens)
    for peer in passives:
        masks = customer_masks(seeds[peer], f"lo/{label}", joint_tokens, bits)
        total = [t + m for t, m in zip(total, masks)]
    return total


def pairwise_scalar_masks(
    party: str, seeds: Mapping[str, bytes], passives: Sequence[str], label: str, count: int, n: int
) -> list[int]:
    """P_k's masks (mod ``n``) for ``count`` scalars that the LO may learn only summed over
    passive parties: ``+m`` for the lower name of a pair, ``-m`` for the other."""
    total = [0] * count
    for peer in passives:
        if peer == party:
            continue
        low, high = sorted((party, peer))
        key = hashlib.blake2b(
            f"{low}/{high}/{label}".encode(),
            key=bytes(seeds[peer]),
            digest_size=64,
            person=_SCALAR_PERSON,
        ).digest()
        sign = 1 if party == low else -1
        for i in range(count):
            block = hashlib.shake_256(key + i.to_bytes(4, "big")).digest(
                (n.bit_length() + 135) // 8
            )
            total[i] = (total[i] + sign * int.from_bytes(block, "big")) % n
    return total
