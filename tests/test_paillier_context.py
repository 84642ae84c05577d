"""Tests of the safe Paillier API for job steps (vfm_flower.paillier.PaillierContext)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from phe import paillier as phe_paillier

from vfm_flower import hazmat
from vfm_flower import paillier as P
from vfm_flower.errors import CiphertextError, PaillierKeyError, PolicyViolation
from vfm_flower.paillier import EncryptedVector, PaillierContext

ROWS = 200


@pytest.fixture(scope="module")
def holder() -> PaillierContext:
    """The key holder (e.g. the label owner)."""
    return PaillierContext.generate(2048)


@pytest.fixture(scope="module")
def party(holder) -> PaillierContext:
    """Another party: the public key only, as received over the wire."""
    return PaillierContext.from_public_bytes(holder.public_bytes())


@pytest.fixture(scope="module")
def other() -> PaillierContext:
    return PaillierContext.generate(2048)


# ---------------------------------------------------------------------------- keys


def test_keys_below_2048_bits_are_refused() -> None:
    with pytest.raises(PolicyViolation) as info:
        PaillierContext.generate(1024)
    assert info.value.rule == "paillier_bits"
    small_public, small_private = phe_paillier.generate_paillier_keypair(n_length=1024)
    with pytest.raises(PolicyViolation):
        PaillierContext(small_public)
    with pytest.raises(PolicyViolation):
        PaillierContext.from_public_bytes(P.public_key_to_bytes(small_public))
    with pytest.raises(PolicyViolation):
        PaillierContext.from_private_bytes(P.private_key_to_bytes(small_private))


def test_key_round_trips_and_typed_key_errors(holder, party, other) -> None:
    assert holder.has_private_key and not party.has_private_key
    assert holder.key_bits == party.key_bits == 2048
    assert party.public_key == holder.public_key
    assert len(holder.public_bytes()) == 256 and holder.ciphertext_width == 512
    again = PaillierContext.from_private_bytes(holder.private_bytes())
    assert again.has_private_key and again.public_bytes() == holder.public_bytes()
    assert not holder.public_context().has_private_key
    with pytest.raises(PolicyViolation):  # an agreement may require more than the key has
        PaillierContext.from_public_bytes(holder.public_bytes(), min_bits=3072)
    with pytest.raises(PaillierKeyError, match="private key"):
        party.private_bytes()
    with pytest.raises(PaillierKeyError):
        PaillierContext.from_private_bytes(b"XXXX" + holder.private_bytes()[4:])
    with pytest.raises(PaillierKeyError):
        PaillierContext.from_private_bytes(holder.private_bytes()[:-1])
    with pytest.raises(PaillierKeyError):
        PaillierContext.from_public_bytes(b"\x00" + holder.public_bytes())
    even = holder.public_bytes()[:-1] + bytes([holder.public_bytes()[-1] & 0xFE])
    with pytest.raises(PaillierKeyError):
        PaillierContext.from_public_bytes(even)
    other_private = P.private_key_from_bytes(other.private_bytes())
    with pytest.raises(PaillierKeyError, match="does not belong"):
        PaillierContext(holder.public_key, other_private)


def test_context_is_immutable_and_not_pickled(holder) -> None:
    with pytest.raises(AttributeError):
        holder._private = None  # type: ignore[misc]
    with pytest.raises(AttributeError):
        holder.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="public_bytes"):
        pickle.dumps(holder)
    assert copy.deepcopy(holder) is holder
    assert repr(holder) == "PaillierContext(bits=2048, private_key=True)"


# ---------------------------------------------------------------------------- encrypt / decrypt


def test_fixed_point_round_trip(holder, party) -> None:
    values = np.random.default_rng(1).uniform(-1.0, 1.0, ROWS)
    for ctx in (holder, party):  # CRT obfuscators (key holder) and plain DJN ones
        enc = ctx.encrypt(values, bound=1.0)
        assert len(enc) == ROWS and enc.fraction_bits == P.RESIDUAL_FRACTION_BITS
        back = holder.decrypt(enc)
        assert back.dtype == np.float64
        assert np.max(np.abs(back - values)) <= 2.0**-33
    with pytest.raises(ValueError, match="bound"):
        party.encrypt(np.array([0.5, 1.5]), bound=1.0)
    with pytest.raises(ValueError, match="NaN"):
        party.encrypt(np.array([np.nan]), bound=1.0)


def test_integer_round_trip(holder, party) -> None:
    labels = np.array([0, 1, 1, 0, 1], dtype=np.int64)
    enc = party.encrypt_integers(labels, value_bits=1)
    back = holder.decrypt(enc)
    assert back.dtype == np.int64 and list(back) == list(labels)
    signed = np.array([-(2**31) + 1, -5, 0, 7, 2**31 - 1])
    assert list(holder.decrypt(holder.encrypt_integers(signed))) == list(signed)
    assert list(holder.decrypt(party.encrypt_integers(np.array([True, False])))) == [1, 0]
    wide = party.encrypt_integers(np.array([2**63, -(2**63)], dtype=object), value_bits=64)
    assert list(holder.decrypt(wide)) == [2**63, -(2**63)]  # above int64: Python ints
    with pytest.raises(ValueError, match="bound"):
        party.encrypt_integers(np.array([2]), value_bits=1)
    with pytest.raises(ValueError, match="integers"):
        party.encrypt_integers(np.array([0.0, 1.0]))


def test_decrypt_without_private_key_raises_the_typed_error(party) -> None:
    enc = party.encrypt_integers(np.array([1, 2, 3]))
    with pytest.raises(PaillierKeyError, match="private key"):
        party.decrypt(enc)


def test_decrypt_under_another_key_is_refused(holder, other) -> None:
    enc = other.encrypt_integers(np.array([1, 2, 3]), value_bits=2)
    nsquare = holder.public_key.nsquare
    foreign = EncryptedVector(tuple(c % nsquare for c in enc.ciphertexts), 2, 0)
    with pytest.raises(CiphertextError) as info:
        holder.decrypt(foreign)  # decrypts to noise far outside the declared bound
    assert info.value.problem == "bound"


# ---------------------------------------------------------------------------- computing


def test_dot_matches_plaintext(holder, party) -> None:
    rng = np.random.default_rng(2)
    d = rng.uniform(-1.0, 1.0, ROWS)
    X = np.column_stack(
        [rng.normal(size=ROWS), rng.integers(0, 2, ROWS).astype(float), np.zeros(ROWS)]
    )
    enc = holder.encrypt(d, bound=1.0)
    result = party.dot(X, enc)
    assert len(result) == 3
    assert result.fraction_bits == P.RESIDUAL_FRACTION_BITS + P.FEATURE_FRACTION_BITS
    assert 1 not in result.ciphertexts  # the zero column is re-randomized too
    tol = ROWS * (2.0**-17 + float(np.max(np.abs(X))) * 2.0**-33)
    assert np.all(np.abs(holder.decrypt(result) - X.T @ d) <= tol)
    counts = rng.integers(-3, 10, (ROWS, 2))
    labels = holder.encrypt_integers(rng.integers(0, 2, ROWS), value_bits=1)
    exact = party.dot(counts, labels, rerandomize=False)
    expected = counts.T @ holder.decrypt(labels)
    assert [int(v) for v in holder.decrypt(exact)] == [int(v) for v in expected]
    with pytest.raises(ValueError, match="rows"):
        party.dot(X[:-1], enc)


def test_grouped_sum_matches_a_plaintext_group_by(holder, party) -> None:
    rng = np.random.default_rng(3)
    n_groups = 6
    groups = rng.integers(-1, n_groups - 1, ROWS)  # -1: skipped; group 5: empty
    y = rng.integers(0, 2, ROWS)
    enc = holder.encrypt_integers(y, value_bits=1)
    sums = party.grouped_sum(enc, groups, n_groups)
    expected = [int(y[groups == g].sum()) for g in range(n_groups)]
    assert list(holder.decrypt(sums)) == expected and expected[-1] == 0
    assert 1 not in sums.ciphertexts  # the empty group does not show as a trivial ciphertext
    # Fixed point, and the process-pool path (rows split in chunks, partial products combined).
    d = rng.uniform(-1.0, 1.0, ROWS)
    fixed = party.grouped_sum(holder.encrypt(d, bound=1.0), groups, n_groups, workers=2)
    plain = np.array([d[groups == g].sum() for g in range(n_groups)])
    assert np.allclose(holder.decrypt(fixed), plain, atol=ROWS * 2.0**-32)
    raw = hazmat.encrypted_group_sums(enc.ciphertexts, groups, n_groups, holder.public_key.nsquare)
    assert hazmat.decrypt_vector(P.private_key_from_bytes(holder.private_bytes()), raw) == expected
    with pytest.raises(ValueError, match="group ids"):
        party.grouped_sum(enc, np.full(ROWS, n_groups), n_groups)
    with pytest.raises(ValueError, match="group ids were given"):
        party.grouped_sum(enc, groups[:-1], n_groups)
    with pytest.raises(ValueError, match="integer"):
        party.grouped_sum(enc, groups.astype(float), n_groups)


def test_rerandomize_changes_ciphertexts_not_plaintexts(holder, party) -> None:
    values = np.array([3, -1, 0, 42])
    enc = holder.encrypt_integers(values)
    fresh = party.rerandomize(enc)
    assert set(fresh.ciphertexts).isdisjoint(enc.ciphertexts)
    assert (fresh.value_bits, fresh.fraction_bits) == (enc.value_bits, enc.fraction_bits)
    assert list(holder.decrypt(fresh)) == list(values)
    again = party.rerandomize(enc)
    assert set(again.ciphertexts).isdisjoint(fresh.ciphertexts)
    # The module-level operation (what the private-gradient protocol uses).
    raw = P.rerandomize(party.public_key, enc.ciphertexts)
    assert list(holder.decrypt(EncryptedVector(tuple(raw), enc.value_bits, 0))) == list(values)
    with pytest.raises(ValueError, match="out of range"):
        P.rerandomize(party.public_key, [0])


def test_add_and_plaintext_operations(holder, party) -> None:
    ints = holder.encrypt_integers(np.array([1, -2, 3]))
    reals = holder.encrypt(np.array([0.5, 0.25, -0.75]), bound=1.0)
    assert list(holder.decrypt(party.add(ints, ints))) == [2, -4, 6]
    mixed = party.add(ints, reals)  # scales aligned to the finer one
    assert mixed.fraction_bits == P.RESIDUAL_FRACTION_BITS
    assert np.allclose(holder.decrypt(mixed), [1.5, -1.75, 2.25], atol=1e-9)
    assert list(holder.decrypt(party.add_plain(ints, np.array([10, 20, -30])))) == [11, 18, -27]
    shifted = party.add_plain(reals, np.array([1.0, -1.0, 0.125]))
    assert np.allclose(holder.decrypt(shifted), [1.5, -0.75, -0.625], atol=1e-9)
    assert list(holder.decrypt(party.multiply_plain(ints, -3))) == [-3, 6, -9]
    assert list(holder.decrypt(party.multiply_plain(ints, np.array([0, 2, -1])))) == [0, -4, -3]
    scaled = party.multiply_plain(reals, 0.5)
    assert np.allclose(holder.decrypt(scaled), [0.25, 0.125, -0.375], atol=1e-9)
    with pytest.raises(ValueError, match="lengths"):
        party.add(ints, holder.encrypt_integers(np.array([1])))
    with pytest.raises(ValueError, match="integers"):
        party.add_plain(ints, np.array([0.5, 0.5, 0.5]))


def test_results_that_could_wrap_around_are_refused(party) -> None:
    enc = party.encrypt_integers(np.array([1, 2]))
    big = party.multiply_plain(enc, 2**1000)
    with pytest.raises(CiphertextError) as info:
        party.multiply_plain(big, 2**1100)
    assert info.value.problem == "bound"
    with pytest.raises(CiphertextError, match="range"):
        party.add(enc, EncryptedVector((0, 1), enc.value_bits, 0))


# ---------------------------------------------------------------------------- serialization


def test_ciphertext_bytes_round_trip(holder, party) -> None:
    enc = holder.encrypt(np.linspace(-1, 1, 7), bound=1.0)
    data = holder.ciphertexts_to_bytes(enc)
    assert len(data) == 16 + 7 * holder.ciphertext_width
    assert party.ciphertexts_from_bytes(data, max_count=7) == enc
    assert party.ciphertexts_from_bytes(data, max_count=100, count=7) == enc
    # The format of encrypted_vector_to_bytes, which the protocol steps read.
    assert P.encrypted_vector_from_bytes(data, party.public_key) == enc
    # Results wider than a residual vector travel too.
    wide = party.dot(np.ones((7, 2)), enc)
    assert party.ciphertexts_from_bytes(party.ciphertexts_to_bytes(wide), max_count=2) == wide


def _problem(ctx: PaillierContext, data: bytes, **kwargs) -> str:
    kwargs.setdefault("max_count", 100)
    with pytest.raises(CiphertextError) as info:
        ctx.ciphertexts_from_bytes(data, **kwargs)
    return info.value.problem


def test_malformed_ciphertext_bytes_are_refused(holder, party) -> None:
    enc = holder.encrypt_integers(np.array([1, 2, 3]))
    data = holder.ciphertexts_to_bytes(enc)
    width = holder.ciphertext_width
    head, body = data[:16], data[16:]
    assert _problem(party, b"XXXX" + data[4:]) == "header"
    assert _problem(party, data[:10]) == "header"
    assert _problem(party, data, max_count=2) == "count"
    assert _problem(party, data, count=4) == "count"
    assert _problem(party, data[:-1]) == "length"
    assert _problem(party, data + b"\x00") == "length"
    assert _problem(party, head + body[:-width]) == "length"
    too_big = (int(holder.public_key.nsquare)).to_bytes(width, "big")
    assert _problem(party, head + body[:-width] + too_big) == "range"
    assert _problem(party, head + body[:-width] + bytes(width)) == "range"
    wide_bound = head[:8] + (5000).to_bytes(4, "big") + head[12:]
    assert _problem(party, wide_bound + body) == "bound"
    no_bound = head[:8] + bytes(4) + head[12:]
    assert _problem(party, no_bound + body) == "bound"
    # Nothing out of range is written either.
    with pytest.raises(CiphertextError, match="range"):
        holder.ciphertexts_to_bytes(EncryptedVector((holder.public_key.nsquare,), 1, 0))


# ---------------------------------------------------------------------------- layout


def test_fast_paths_are_not_part_of_the_safe_api() -> None:
    assert "PaillierContext" in P.__all__ and "rerandomize" in P.__all__
    for name in ("DJNEncryptor", "encrypt_vector", "encrypted_dot_products", "pack_ciphertexts"):
        assert name not in P.__all__ and name in hazmat.__all__
        assert not hasattr(P, name)
    with pytest.raises(AttributeError):
        P.no_such_name  # noqa: B018
    assert hazmat.__doc__ is not None and "no safety net" in hazmat.__doc__
