"""BFV parameters for the lattice backend: chosen from the computation, checked by every party.

:func:`lattice_parameters` picks the smallest ring degree whose 128-bit bound on ``log2 Q``
(the HE standard's table, SEAL's ``MaxBitCount``) holds the noise of the computation it is
asked for: the plaintext width, the plaintext-product depth and the terms summed. The noise
model (:func:`noise_bits`) is a bound from above; the tests check it against SEAL's noise
budget. The sanitization margin (why a re-randomized ciphertext is independent of the
computation) is explained in :mod:`vfm_flower.lattice`.

The public key material is framed here too (parameters first, then each prime's keys), so a
party reads and checks the parameters before SEAL parses a key.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass
from typing import Any

from vfm_flower.errors import CiphertextError, ConfigurationError
from vfm_flower.hazmat import seal_bfv as _bfv

__all__ = [
    "LatticeParameters",
    "lattice_parameters",
    "noise_bits",
    "product_noise_bits",
    "rotation_sum_noise_bits",
    "sanitized_noise_bits",
    "FRESH_NOISE_BITS",
    "PRIME_BITS",
    "STATISTICAL_BITS",
    "SECURITY_BITS",
]

#: SEAL's largest prime size; also the largest plaintext prime.
PRIME_BITS = 60
#: The protocol's statistical parameter (as the Paillier masks' ``STATISTICAL_BITS``).
STATISTICAL_BITS = 40
RING_DEGREES = (8192, 16384, 32768)
SECURITY_BITS = 128
#: Bound on the bytes of one public or secret key (the Galois keys at N = 32768 are ~330 MB).
MAX_KEY_BYTES = 1 << 30

_PUBLIC_MAGIC = b"VFMLATP1"
_PRIVATE_MAGIC = b"VFMLATS1"


@dataclass(frozen=True)
class LatticeParameters:
    """BFV parameters: public, sent with the public key, checked by every party.

    Attributes
    ----------
    poly_degree : int
        Ring degree ``N``: the slots per ciphertext.
    coeff_bits : tuple of int
        Sizes of the ciphertext primes, the special (key-switching) prime last.
    plain_bits : tuple of int
        Sizes of the plaintext primes (their product is ``T``).
    sanitize_primes : int
        Data primes a re-randomized ciphertext keeps.
    plain_depth : int
        Plaintext products in a row the noise allows.
    terms_bits : int
        At most ``2**terms_bits`` products are summed into one ciphertext.
    statistical_bits : int
        Sanitization's statistical distance is at most ``2**-statistical_bits``.
    """

    poly_degree: int
    coeff_bits: tuple[int, ...]
    plain_bits: tuple[int, ...]
    sanitize_primes: int
    plain_depth: int
    terms_bits: int
    statistical_bits: int = STATISTICAL_BITS

    @property
    def slots(self) -> int:
        return self.poly_degree

    @property
    def value_capacity_bits(self) -> int:
        """Largest ``value_bits`` a vector may carry: ``2**value_bits < T / 2``."""
        return sum(b - 1 for b in self.plain_bits) - 1

    @property
    def security_bits(self) -> int:
        """128 when ``log2 Q`` is within the HE standard's bound for ``N`` (else 0)."""
        within = sum(self.coeff_bits) <= _bfv.max_coeff_bits(self.poly_degree)
        return SECURITY_BITS if within else 0

    def check(self) -> None:
        """Refuse parameters outside what this module supports or below 128-bit security.

        Raises
        ------
        ConfigurationError
            Naming the parameter.
        """
        n = self.poly_degree
        if n not in RING_DEGREES:
            raise ConfigurationError(f"lattice ring degree {n}: one of {RING_DEGREES} expected")
        bits = (*self.coeff_bits, *self.plain_bits)
        if not all(isinstance(b, int) and 20 <= b <= PRIME_BITS for b in bits):
            raise ConfigurationError("lattice primes must have 20 to 60 bits")
        if not 1 <= len(self.plain_bits) <= 4 or len(self.coeff_bits) < 3:
            raise ConfigurationError("lattice parameters: 1-4 plaintext and 3+ ciphertext primes")
        if not 1 <= self.sanitize_primes <= len(self.coeff_bits) - 2:
            raise ConfigurationError("lattice parameters: bad sanitize_primes")
        if not 1 <= self.plain_depth <= 4 or not 0 <= self.terms_bits <= 24:
            raise ConfigurationError("lattice parameters: depth 1-4, terms_bits 0-24")
        if self.statistical_bits < STATISTICAL_BITS:
            raise ConfigurationError(
                f"lattice parameters: statistical_bits below {STATISTICAL_BITS}"
            )
        if self.security_bits < SECURITY_BITS:
            raise ConfigurationError(
                f"lattice parameters below {SECURITY_BITS}-bit security: log2 Q = "
                f"{sum(self.coeff_bits)} exceeds {_bfv.max_coeff_bits(n)} for N = {n}"
            )
        t_bits = max(self.plain_bits)
        need = noise_bits(n, t_bits, self.plain_depth, self.terms_bits)
        if self.max_sanitizable_noise_bits < need or self.level_bits(True) < _sanitize_bits(
            n, t_bits
        ):
            raise ConfigurationError(
                "lattice parameters: the ciphertext primes are too small for the declared "
                "depth (noise would not decrypt or not be sanitized)"
            )

    def level_bits(self, sanitized: bool) -> int:
        """``log2`` of the ciphertext modulus at the full (or the sanitized) level."""
        data = self.coeff_bits[:-1]
        return sum(data[: self.sanitize_primes]) if sanitized else sum(data)

    def max_decryptable_noise_bits(self, sanitized: bool) -> int:
        """Noise a ciphertext at that level may carry and still decrypt (below ``q / 2t``)."""
        return self.level_bits(sanitized) - max(self.plain_bits) - 2

    @property
    def max_sanitizable_noise_bits(self) -> int:
        """Noise a vector may carry and still be sanitized with the statistical margin:
        ``log2(Q / q)`` less that margin."""
        return (
            self.level_bits(False)
            - self.level_bits(True)
            - _switch_margin_bits(self.poly_degree, self.statistical_bits)
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatticeParameters:
        try:
            params = cls(
                poly_degree=int(data["poly_degree"]),
                coeff_bits=tuple(int(b) for b in data["coeff_bits"]),
                plain_bits=tuple(int(b) for b in data["plain_bits"]),
                sanitize_primes=int(data["sanitize_primes"]),
                plain_depth=int(data["plain_depth"]),
                terms_bits=int(data["terms_bits"]),
                statistical_bits=int(data["statistical_bits"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"malformed lattice parameters: {exc}") from None
        params.check()
        return params


#: The per-operation noise model (log2 of a bound on a ciphertext's noise; the tests check it
#: from above against SEAL's noise budget). A fresh public-key encryption has about 2**10.
FRESH_NOISE_BITS = 12
#: Additions a parameter set leaves room for (``2**ADD_HEADROOM_BITS`` terms) beyond its products.
ADD_HEADROOM_BITS = 8


def product_noise_bits(n: int, t_bits: int, terms: int) -> int:
    """Noise bits a slot-wise product with a batched plaintext (coefficients below ``t``)
    adds, summed over ``terms`` products: ``t sqrt(N)`` times a small factor, times ``terms``."""
    return t_bits + (n.bit_length() - 1) // 2 + 4 + max(terms - 1, 0).bit_length()


def rotation_sum_noise_bits(n: int) -> int:
    """Noise bits a sum of all slots adds (``log2 N`` doublings and key switching)."""
    return (n.bit_length() - 1) + 2


def sanitized_noise_bits(n: int) -> int:
    """Noise bits of a sanitized ciphertext: SEAL's rounding, below ``N``."""
    return (n.bit_length() - 1) + 2


def noise_bits(n: int, t_bits: int, depth: int, terms_bits: int) -> int:
    """The noise a parameter set must hold: ``depth`` products each summing up to
    ``2**terms_bits`` terms, a rotation sum, and ``2**ADD_HEADROOM_BITS`` additions."""
    per_product = product_noise_bits(n, t_bits, 1 << terms_bits)
    return FRESH_NOISE_BITS + depth * per_product + rotation_sum_noise_bits(n) + ADD_HEADROOM_BITS


def _sanitize_bits(n: int, t_bits: int) -> int:
    """``log2 q`` a sanitized ciphertext needs to decrypt: its rounding noise is below ``N``
    and must stay under ``q / (2 t)``, with 10 bits to spare for sums of such ciphertexts."""
    return t_bits + sanitized_noise_bits(n) + 10


def _switch_margin_bits(n: int, stat: int) -> int:
    """How far below ``Q / q`` the noise must stay for the sanitization: ``e q / Q`` below
    ``2**-(stat + log2 N + 1)`` (the rounding of all ``N`` coefficients then differs between
    two noises with probability at most ``2**-stat``)."""
    return (n.bit_length() - 1) + 1 + stat


def lattice_parameters(
    *,
    plaintext_bits: int,
    plain_depth: int = 2,
    terms_bits: int = 10,
    statistical_bits: int = STATISTICAL_BITS,
) -> LatticeParameters:
    """The smallest BFV parameters at 128-bit security for a computation.

    Parameters
    ----------
    plaintext_bits : int
        Every value (inputs, intermediate and results) satisfies ``|v| < 2**plaintext_bits``.
        Up to 60 bits take one plaintext prime; wider values take several (CRT), and every
        operation is paid once per prime.
    plain_depth : int
        Plaintext products in a row (``2``: ``X [[M X^T [[d]]]]``, the private-gradient
        protocol's direction image).
    terms_bits : int
        At most ``2**terms_bits`` products summed into one ciphertext (row blocks in ``dot``,
        columns in ``matvec``).
    statistical_bits : int
        The sanitization's statistical distance bound (at least 40).

    Returns
    -------
    LatticeParameters
        The smallest ring degree (8192, 16384 or 32768) whose 128-bit bound on ``log2 Q``
        holds the noise; ``N`` slots per ciphertext.

    Raises
    ------
    ConfigurationError
        If even ``N = 32768`` cannot hold it (lower the depth or the plaintext width).
    """
    if not 1 <= plaintext_bits <= 4 * (PRIME_BITS - 1) - 2:
        raise ConfigurationError(f"plaintext_bits must be 1 to {4 * (PRIME_BITS - 1) - 2}")
    if not 1 <= plain_depth <= 4 or not 0 <= terms_bits <= 24:
        raise ConfigurationError("plain_depth must be 1 to 4 and terms_bits 0 to 24")
    # count primes of t_bits bits (each above 2**(t_bits - 1)) hold count * (t_bits - 1) - 1
    count = math.ceil((plaintext_bits + 1) / (PRIME_BITS - 1))
    t_bits = max(20, math.ceil((plaintext_bits + 1) / count) + 1)
    for n in RING_DEGREES:
        # the sanitized level and the primes above it, each group split into equal primes
        # of at most 60 bits; the special (key-switching) prime last, at 60
        low_bits = _sanitize_bits(n, t_bits)
        low = math.ceil(low_bits / PRIME_BITS)
        above_bits = noise_bits(n, t_bits, plain_depth, terms_bits) + _switch_margin_bits(
            n, statistical_bits
        )
        above = math.ceil(above_bits / PRIME_BITS)
        coeff = (
            (max(20, math.ceil(low_bits / low)),) * low
            + (max(20, math.ceil(above_bits / above)),) * above
            + (PRIME_BITS,)
        )
        if sum(coeff) <= _bfv.max_coeff_bits(n):
            params = LatticeParameters(
                poly_degree=n,
                coeff_bits=coeff,
                plain_bits=(t_bits,) * count,
                sanitize_primes=low,
                plain_depth=plain_depth,
                terms_bits=terms_bits,
                statistical_bits=statistical_bits,
            )
            params.check()
            return params
    raise ConfigurationError(
        f"no 128-bit BFV parameters hold {plaintext_bits}-bit values at depth {plain_depth}: "
        "lower the depth or the values' width"
    )


def _frame(chunks: list[bytes]) -> bytes:
    return b"".join(struct.pack("<Q", len(c)) + c for c in chunks)


def _unframe(data: bytes, offset: int, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        if offset + 8 > len(data):
            raise CiphertextError("length", "lattice key material is truncated")
        (size,) = struct.unpack_from("<Q", data, offset)
        offset += 8
        if size > MAX_KEY_BYTES or offset + size > len(data):
            raise CiphertextError("length", "lattice key material is too long or truncated")
        out.append(bytes(data[offset : offset + size]))
        offset += size
    if offset != len(data):
        raise CiphertextError("length", "trailing bytes after the lattice key material")
    return out


def pack_public(params: LatticeParameters, publics: list[tuple[bytes, bytes]]) -> bytes:
    head = json.dumps(params.to_dict(), sort_keys=True).encode()
    flat = [head] + [b for pair in publics for b in pair]
    return _PUBLIC_MAGIC + _frame(flat)


def unpack_public(data: bytes) -> tuple[LatticeParameters, list[tuple[bytes, bytes]]]:
    if not data.startswith(_PUBLIC_MAGIC):
        raise CiphertextError("header", "not a lattice public key")
    offset = len(_PUBLIC_MAGIC)
    if offset + 8 > len(data):
        raise CiphertextError("length", "lattice key material is truncated")
    (size,) = struct.unpack_from("<Q", data, offset)
    if size > 1 << 16 or offset + 8 + size > len(data):
        raise CiphertextError("length", "lattice parameters too long or truncated")
    try:
        params = LatticeParameters.from_dict(json.loads(data[offset + 8 : offset + 8 + size]))
    except json.JSONDecodeError:
        raise CiphertextError("header", "malformed lattice parameters") from None
    chunks = _unframe(data, offset + 8 + size, 2 * len(params.plain_bits))
    return params, [(chunks[2 * i], chunks[2 * i + 1]) for i in range(len(params.plain_bits))]


def pack_secret(secrets: list[bytes]) -> bytes:
    return _PRIVATE_MAGIC + _frame(secrets)


def unpack_secret(data: bytes, count: int) -> list[bytes]:
    if not data.startswith(_PRIVATE_MAGIC):
        raise CiphertextError("header", "not a lattice secret key")
    return _unframe(data, len(_PRIVATE_MAGIC), count)
