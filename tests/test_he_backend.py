"""One contract, two backends: Paillier and BFV give the same results through ``HEBackend``.

A protocol written against :class:`vfm_flower.he_backend.HEBackend` runs on either backend;
this checks every operation of the interface on both against numpy.
"""

from __future__ import annotations

import numpy as np
import pytest

from vfm_flower.he_backend import HEBackend
from vfm_flower.paillier import PaillierContext


def _paillier() -> HEBackend:
    return PaillierContext.generate(2048)


def _lattice() -> HEBackend:
    pytest.importorskip("tenseal")
    from vfm_flower.lattice import LatticeContext, lattice_parameters  # noqa: PLC0415

    return LatticeContext.generate(lattice_parameters(plaintext_bits=40, plain_depth=2))


@pytest.fixture(scope="module", params=[_paillier, _lattice], ids=["paillier", "bfv"])
def holder(request) -> HEBackend:
    return request.param()


def test_backend_names_and_security(holder):
    assert isinstance(holder, HEBackend)
    assert holder.name in {"paillier", "bfv"}
    assert holder.security_bits >= 112 and holder.has_private_key


def test_every_operation_matches_numpy_from_a_public_context(holder):
    rng = np.random.default_rng(3)
    rows, m = 40, 3
    d = rng.integers(-(2**10), 2**10, rows)
    X = rng.integers(-(2**6), 2**6, (rows, m))
    k = rng.integers(-(2**12), 2**12, m)
    party = type(holder).from_public_bytes(holder.public_bytes())
    assert not party.has_private_key
    wire = holder.ciphertexts_to_bytes(holder.encrypt_integers(d, value_bits=11))
    enc_d = party.ciphertexts_from_bytes(wire, max_count=rows, count=rows)
    g = party.dot(X, enc_d)
    image = party.matvec(X, g)
    both = party.add(party.add_plain(g, k), g)
    back = {
        "g": party.ciphertexts_to_bytes(party.rerandomize(both)),
        "image": party.ciphertexts_to_bytes(party.rerandomize(image)),
    }
    got_g = holder.decrypt(holder.ciphertexts_from_bytes(back["g"], max_count=m))
    got_image = holder.decrypt(holder.ciphertexts_from_bytes(back["image"], max_count=rows))
    assert np.array_equal(got_g, 2 * (X.T @ d) + k)
    assert np.array_equal(got_image, X @ (X.T @ d))
