"""Secure sum with pairwise masks (the forward pass of vertical training).

Each passive party holds a partial score vector ``u_k = X_k w_k`` over the aligned rows. It
encodes it in fixed point in the ring Z_{2^64}, adds one pseudo-random mask per *pair* of
parties (the label owner included), and sends the masked vector to the server. Masks of a
pair are added by one side and subtracted by the other, so they cancel in the sum. The server
adds the masked vectors (it learns nothing: every vector it sees is masked with at least the
mask shared with the label owner). The label owner removes its own pairwise masks (it adds
its own masks of a zero vector) and gets ``sum_k u_k``.

Pairwise seeds come from a static-static X25519 agreement between the parties' exchange keys
(listed in the signed agreement), passed through HKDF-SHA256 bound to both party names, the run
id and the agreement hash; they are derived once per run. Each mask is the ChaCha20 keystream
of a key and nonce derived by HKDF from the seed and a label that binds the round, iteration
and phase. A label must never be reused for two different vectors (the difference of two
vectors masked under the same label would leak).

Fixed point: values are scaled by ``2**FRACTION_BITS`` and rounded to the nearest integer, two's
complement in 64 bits. Encoding refuses values whose magnitude reaches ``MAX_ABS_VALUE`` so that
a sum of up to ``2**SUM_HEADROOM_BITS`` encoded vectors cannot wrap around.

What a collusion reveals: the server and the label owner together can remove the label owner's
pairwise masks from each masked vector; with two or more passive parties each vector still
carries the masks shared with the other passive parties, so only the sum is revealed (which the
label owner learns anyway). With a single passive party the sum *is* that party's vector.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vfm_flower.keys import PartyIdentity, PublicIdentity

__all__ = [
    "FRACTION_BITS",
    "SUM_HEADROOM_BITS",
    "MAX_ABS_VALUE",
    "SEED_BYTES",
    "encode_fixed",
    "decode_fixed",
    "derive_pairwise_seeds",
    "pairwise_mask",
    "mask_vector",
    "sum_masked",
    "unmask_sum",
    "u64_to_bytes",
    "u64_from_bytes",
]

logger = logging.getLogger(__name__)

#: Fixed-point precision of masked vectors: values are multiples of 2**-24 (~6e-8).
FRACTION_BITS = 24
#: Head room for sums: up to 2**8 = 256 encoded vectors can be added without wrapping.
SUM_HEADROOM_BITS = 8
#: Largest magnitude ``encode_fixed`` accepts (exclusive): 2**(63 - 24 - 8) = 2**31.
MAX_ABS_VALUE = float(2 ** (63 - FRACTION_BITS - SUM_HEADROOM_BITS))
#: Size of a pairwise seed in bytes.
SEED_BYTES = 32

_SCALE = float(2**FRACTION_BITS)
_SEED_INFO = b"vfm-flower/v1/pairwise-mask-seed"
_PRG_INFO = b"vfm-flower/v1/pairwise-mask-prg"
_U64 = np.dtype("<u8")


def _length_prefixed(*fields: bytes) -> bytes:
    """Unambiguous concatenation: each field preceded by its 4-byte big-endian length."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def encode_fixed(x: np.ndarray) -> np.ndarray:
    """Encode real values as fixed-point integers in Z_{2^64} (two's complement).

    Parameters
    ----------
    x : np.ndarray
        Real values (any shape), finite, with magnitude below ``MAX_ABS_VALUE``.

    Returns
    -------
    np.ndarray
        ``uint64`` array of ``round(x * 2**FRACTION_BITS) mod 2**64``, same shape.

    Raises
    ------
    ValueError
        If a value is not finite or too large to encode without risking overflow of a sum.
    """
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("cannot encode a vector holding NaN or infinite values")
    if arr.size and float(np.max(np.abs(arr))) >= MAX_ABS_VALUE:
        raise ValueError(
            f"value out of fixed-point range: magnitudes must stay below 2**"
            f"{int(math.log2(MAX_ABS_VALUE))} (FRACTION_BITS={FRACTION_BITS}, "
            f"head room for 2**{SUM_HEADROOM_BITS} summands); rescale the inputs"
        )
    return np.rint(arr * _SCALE).astype(np.int64).view(np.uint64)


def decode_fixed(v: np.ndarray) -> np.ndarray:
    """Decode fixed-point integers of Z_{2^64} (two's complement) back to ``float64``.

    Parameters
    ----------
    v : np.ndarray
        ``uint64`` (or ``int64``) fixed-point values.

    Returns
    -------
    np.ndarray
        ``float64`` values ``v / 2**FRACTION_BITS`` with ``v`` read as a signed 64-bit integer.
    """
    arr = np.asarray(v)
    if arr.dtype not in (np.uint64, np.int64):
        raise ValueError(f"fixed-point values must be uint64 or int64, got {arr.dtype}")
    return arr.astype(np.uint64, copy=False).view(np.int64).astype(np.float64) / _SCALE


def derive_pairwise_seeds(
    identity: PartyIdentity,
    peers: Mapping[str, PublicIdentity],
    *,
    run_id: str,
    agreement_hash: str,
) -> dict[str, bytes]:
    """Derive one mask seed per peer from static-static X25519 agreements (once per run).

    Both sides of a pair derive the same seed: the HKDF ``info`` binds both party names in
    sorted order, the run id and the agreement hash.

    Parameters
    ----------
    identity : PartyIdentity
        This party's private identity.
    peers : Mapping[str, PublicIdentity]
        The other parties of the secure sum, by name (an entry for this party itself is
        ignored). The names must match the identities' names.
    run_id : str
        Identifier of the run (a new run gives new seeds).
    agreement_hash : str
        Hash of the signed collaboration agreement.

    Returns
    -------
    dict[str, bytes]
        A ``SEED_BYTES``-byte seed per peer name. Secret: never log or send it.

    Raises
    ------
    ValueError
        If a peer entry is malformed, run id or agreement hash is empty, or there is no peer.
    """
    if not run_id or not agreement_hash:
        raise ValueError("pairwise seeds need a non-empty run id and agreement hash")
    me = identity.party
    seeds: dict[str, bytes] = {}
    for name, peer in peers.items():
        if name == me:
            if peer.exchange_key != identity.public.exchange_key:
                raise ValueError(f"peer list holds another key under this party's name '{me}'")
            continue
        if peer.party != name:
            raise ValueError(f"peer entry '{name}' holds the public identity of '{peer.party}'")
        shared = identity.exchange(peer.exchange_public_key())
        low, high = sorted((me, name))
        info = _SEED_INFO + _length_prefixed(
            low.encode(), high.encode(), run_id.encode(), agreement_hash.encode()
        )
        seeds[name] = HKDF(
            algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info
        ).derive(shared)
    if not seeds:
        raise ValueError("a secure sum needs at least one peer")
    logger.debug("derived %d pairwise mask seeds", len(seeds))
    return seeds


def pairwise_mask(seed: bytes, label: str, length: int) -> np.ndarray:
    """The pseudo-random mask of one pair for one label: ChaCha20 keystream as ``uint64``.

    Parameters
    ----------
    seed : bytes
        The pair's ``SEED_BYTES``-byte seed (from :func:`derive_pairwise_seeds`).
    label : str
        Binds the use of the mask (run, round, iteration, phase). Never reuse a label for two
        different vectors.
    length : int
        Number of 64-bit words.

    Returns
    -------
    np.ndarray
        ``uint64`` array of ``length`` uniformly distributed words.
    """
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed must be {SEED_BYTES} bytes")
    if not label:
        raise ValueError("a mask label must be a non-empty string")
    if length < 0:
        raise ValueError("mask length must be non-negative")
    material = HKDF(
        algorithm=hashes.SHA256(),
        length=44,
        salt=None,
        info=_PRG_INFO + _length_prefixed(label.encode()),
    ).derive(bytes(seed))
    # cryptography's ChaCha20 takes a 16-byte block counter (32-bit, little-endian) + nonce:
    # the counter starts at zero, so a mask of up to 2**32 blocks (32 GiB) never wraps it (a
    # random start overflowed at a few hundred thousand rows).
    key, nonce = material[:32], bytes(4) + material[32:44]
    if length > (2**32) * 8:
        raise ValueError("a mask longer than 2**35 words would wrap the ChaCha20 counter")
    encryptor = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * length))
    return np.frombuffer(stream, dtype=_U64).astype(np.uint64)


def _check_u64(values: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype != np.uint64 or arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D uint64 array, got {arr.dtype} with {arr.ndim} dims")
    return arr


def mask_vector(
    values_u64: np.ndarray, me: str, seeds: Mapping[str, bytes], label: str
) -> np.ndarray:
    """Mask a fixed-point vector with this party's pairwise masks (mod 2**64).

    The mask of a peer sorting after ``me`` is added, the mask of a peer sorting before is
    subtracted, so each pair's masks cancel in the sum over all parties.

    Parameters
    ----------
    values_u64 : np.ndarray
        1-D ``uint64`` vector (from :func:`encode_fixed`).
    me : str
        This party's name.
    seeds : Mapping[str, bytes]
        Seed per peer name (from :func:`derive_pairwise_seeds`).
    label : str
        Label of this use (run, round, iteration, phase).

    Returns
    -------
    np.ndarray
        The masked ``uint64`` vector (a new array).
    """
    values = _check_u64(values_u64, "values to mask")
    if not seeds:
        raise ValueError("masking needs at least one peer seed")
    out = values.copy()
    for peer in sorted(seeds):
        if peer == me:
            raise ValueError(f"seed list holds this party's own name '{me}'")
        mask = pairwise_mask(seeds[peer], label, out.size)
        if peer > me:
            out += mask
        else:
            out -= mask
    return out


def sum_masked(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Add masked vectors mod 2**64 (the server's step).

    Parameters
    ----------
    vectors : Sequence[np.ndarray]
        Masked 1-D ``uint64`` vectors of the same length, one per sending party.

    Returns
    -------
    np.ndarray
        Their sum mod 2**64 (still masked with the receiving party's pairwise masks).
    """
    if not vectors:
        raise ValueError("nothing to sum: no masked vector received")
    first = _check_u64(vectors[0], "masked vector")
    total = first.copy()
    for i, vec in enumerate(vectors[1:], start=1):
        arr = _check_u64(vec, "masked vector")
        if arr.size != total.size:
            raise ValueError(f"masked vector {i} has {arr.size} entries, expected {total.size}")
        total += arr
    return total


def unmask_sum(
    masked_sum: np.ndarray, me: str, seeds: Mapping[str, bytes], label: str
) -> np.ndarray:
    """Remove the receiving party's pairwise masks from a masked sum (the label owner's step).

    The receiving party did not send a vector; adding its own mask of a zero vector cancels
    the masks the senders share with it, leaving the plain sum (masks between senders
    cancel among themselves).

    Parameters
    ----------
    masked_sum : np.ndarray
        Output of :func:`sum_masked`.
    me : str
        The receiving party's name.
    seeds : Mapping[str, bytes]
        Its seed per sending party.
    label : str
        The label the senders used.

    Returns
    -------
    np.ndarray
        The plain ``uint64`` fixed-point sum (decode with :func:`decode_fixed`).
    """
    total = _check_u64(masked_sum, "masked sum")
    return total + mask_vector(np.zeros(total.size, dtype=np.uint64), me, seeds, label)


def u64_to_bytes(values: np.ndarray) -> bytes:
    """Serialize a 1-D ``uint64`` vector as little-endian 8-byte words."""
    return _check_u64(values, "vector to serialize").astype(_U64, copy=False).tobytes()


def u64_from_bytes(data: bytes, length: int | None = None) -> np.ndarray:
    """Parse little-endian 8-byte words into a ``uint64`` vector.

    Parameters
    ----------
    data : bytes
        Output of :func:`u64_to_bytes`.
    length : int, optional
        Expected number of entries; a mismatch is an error.

    Raises
    ------
    ValueError
        If the byte count is not a multiple of 8 or does not match ``length``.
    """
    if len(data) % 8:
        raise ValueError(f"a uint64 vector needs a multiple of 8 bytes, got {len(data)}")
    if length is not None and len(data) != 8 * length:
        raise ValueError(f"expected {length} uint64 entries, got {len(data) // 8}")
    return np.frombuffer(data, dtype=_U64).astype(np.uint64)
