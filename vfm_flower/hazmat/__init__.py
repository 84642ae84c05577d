"""Hazardous materials: the fast paths behind :mod:`vfm_flower.paillier`.

These are internals with **no safety net**. They do not check that a bound declared for a
vector holds, that a result is masked or re-randomized before it reaches the key owner, that
an obfuscator is used once, or that a ciphertext belongs to the key it is combined under; a
misuse gives wrong results or leaks plaintext information silently. Callers must use
:mod:`vfm_flower.paillier` (:class:`~vfm_flower.paillier.PaillierContext` for job steps, the
protocol steps for vertical training), which validate their inputs and raise typed errors.

Modules
-------
paillier_djn
    Key sizes, signed encodings, process pools, fixed-width ciphertext bytes, DJN
    (short-exponent, fixed-base table) encryption, full-size obfuscators for re-randomization,
    CRT decryption.
paillier_dot
    Fixed-point quantization, bucketed / windowed (Pippenger) and joint-bucket
    multi-exponentiation for ``[[X^T d]]``.
paillier_pack
    Group sums, slot layout and packing.
paillier_image
    Packed row images ``[[X w]]`` (per-position lookup tables) and small signed products.

Every name of the first three modules' ``__all__`` is re-exported here.
"""

from __future__ import annotations

from vfm_flower.hazmat import paillier_djn, paillier_dot, paillier_pack
from vfm_flower.hazmat.paillier_djn import *  # noqa: F403
from vfm_flower.hazmat.paillier_dot import *  # noqa: F403
from vfm_flower.hazmat.paillier_pack import *  # noqa: F403

__all__ = [
    "paillier_djn",
    "paillier_dot",
    "paillier_pack",
    *paillier_djn.__all__,
    *paillier_dot.__all__,
    *paillier_pack.__all__,
]
