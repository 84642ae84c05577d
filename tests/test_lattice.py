"""The BFV lattice backend: exact results against numpy, bounds, depth, sanitization, wire.

The sanitization test is the measurable side of the circuit-privacy argument: after
:meth:`LatticeContext.rerandomize` a product's noise budget is that of a fresh ciphertext
switched down, whatever the computation (its noise no longer shows).
"""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest

pytest.importorskip("tenseal")

from vfm_flower.errors import CiphertextError, ConfigurationError, PaillierKeyError  # noqa: E402
from vfm_flower.hazmat import seal_bfv  # noqa: E402
from vfm_flower.lattice import LatticeContext, LatticeVector  # noqa: E402
from vfm_flower.lattice_parameters import (  # noqa: E402
    LatticeParameters,
    lattice_parameters,
    noise_bits,
)

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def holder() -> LatticeContext:
    """Depth 2, one 43-bit plaintext prime (the label owner's keys)."""
    return LatticeContext.generate(lattice_parameters(plaintext_bits=40, plain_depth=2))


@pytest.fixture(scope="module")
def party(holder) -> LatticeContext:
    return LatticeContext.from_public_bytes(holder.public_bytes())


@pytest.fixture(scope="module")
def wide() -> LatticeContext:
    """Two plaintext primes (CRT): 92-bit values."""
    return LatticeContext.generate(lattice_parameters(plaintext_bits=92, plain_depth=2))


# ---------------------------------------------------------------------------- parameters


def test_parameters_are_the_smallest_at_128_bits_and_state_depth_and_slots():
    params = lattice_parameters(plaintext_bits=92, plain_depth=2)
    assert params.poly_degree == params.slots == 16384
    assert params.plain_depth == 2 and len(params.plain_bits) == 2
    assert params.value_capacity_bits >= 92
    assert sum(params.coeff_bits) <= seal_bfv.max_coeff_bits(16384)
    assert params.security_bits == 128


def test_parameters_refuse_what_no_ring_holds():
    with pytest.raises(ConfigurationError, match="plain_depth"):
        lattice_parameters(plaintext_bits=200, plain_depth=5)
    with pytest.raises(ConfigurationError, match="plaintext_bits"):
        lattice_parameters(plaintext_bits=0)


def test_received_parameters_below_128_bits_or_too_small_are_refused():
    params = lattice_parameters(plaintext_bits=40, plain_depth=1).to_dict()
    weak = dict(params, coeff_bits=[60] * 8)  # 480 bits > 438 for N = 16384
    with pytest.raises(ConfigurationError, match="128-bit security"):
        LatticeParameters.from_dict(weak)
    short = dict(params, coeff_bits=[60, 60, 60, 60])
    with pytest.raises(ConfigurationError, match="too small for the declared depth"):
        LatticeParameters.from_dict(short)
    with pytest.raises(ConfigurationError, match="malformed"):
        LatticeParameters.from_dict({"poly_degree": 16384})


def test_public_bytes_with_weakened_parameters_are_refused(holder):
    data = holder.public_bytes()
    (size,) = struct.unpack_from("<Q", data, 8)
    params = json.loads(data[16 : 16 + size])
    params["poly_degree"] = 8192
    head = json.dumps(params, sort_keys=True).encode()
    forged = data[:8] + struct.pack("<Q", len(head)) + head + data[16 + size :]
    with pytest.raises(ConfigurationError):
        LatticeContext.from_public_bytes(forged)


# ---------------------------------------------------------------------------- arithmetic


def test_dot_and_matvec_are_exact_against_numpy(holder, party):
    rows, m = 20_000, 4  # two row blocks, the second one partial
    d = RNG.integers(-(2**10), 2**10, rows)
    X = RNG.integers(-(2**8), 2**8, (rows, m))
    g = party.dot(X, holder.encrypt_integers(d, value_bits=11))
    assert g.replicated and len(g) == m
    assert np.array_equal(holder.decrypt(party.rerandomize(g)), X.T @ d)
    w = RNG.integers(-(2**8), 2**8, m)
    image = party.matvec(X, holder.encrypt_integers(w, value_bits=9, replicated=True))
    assert not image.replicated and len(image) == rows
    assert np.array_equal(holder.decrypt(party.rerandomize(image)), X @ w)


def test_add_and_add_plain_are_exact(holder, party):
    a = RNG.integers(-1000, 1000, 300)
    b = RNG.integers(-1000, 1000, 300)
    k = RNG.integers(-(2**20), 2**20, 300)
    ea, eb = holder.encrypt_integers(a, value_bits=10), holder.encrypt_integers(b, value_bits=10)
    total = party.add_plain(party.add(ea, eb), k)
    assert np.array_equal(holder.decrypt(total), a + b + k)
    # the key holder adds what several parties sanitized (the summed images)
    sums = party.add(party.rerandomize(ea), party.rerandomize(eb))
    assert np.array_equal(holder.decrypt(sums), a + b)


def test_depth_two_on_wide_crt_plaintexts_is_exact(wide):
    rows, m = 3000, 3
    d = RNG.integers(-(2**20), 2**20, rows)
    X = RNG.integers(-(2**12), 2**12, (rows, m))
    g = wide.dot(X, wide.encrypt_integers(d, value_bits=21))
    image = wide.matvec(X, g)  # X (X^T d): two plaintext products in a row
    expect = X.astype(object) @ (X.T.astype(object) @ d.astype(object))
    got = wide.decrypt(wide.rerandomize(image))
    assert list(got) == list(expect)


def test_wide_values_round_trip_through_crt(wide):
    values = np.array([2**90, -(2**91) + 1, 0, -1, 12345], dtype=object)
    assert list(wide.decrypt(wide.encrypt_integers(values, value_bits=92))) == list(values)


# ---------------------------------------------------------------------------- refusals


def test_bounds_and_depth_are_enforced(holder, party):
    with pytest.raises(ValueError, match="bound"):
        holder.encrypt_integers(np.array([16]), value_bits=4)
    with pytest.raises(CiphertextError, match="plaintext space"):
        holder.encrypt_integers(np.array([1]), value_bits=60)
    d = holder.encrypt_integers(np.array([1, 2, 3]), value_bits=30)
    with pytest.raises(CiphertextError, match="plaintext space"):
        party.dot(np.full((3, 1), 2**12), d)
    X = np.ones((3, 2), dtype=np.int64)
    once = party.dot(X, holder.encrypt_integers(np.array([1, 2, 3]), value_bits=2))
    twice = party.matvec(X, once)
    with pytest.raises(CiphertextError, match="depth 3"):
        party.dot(X, twice)
    with pytest.raises(CiphertextError, match="only be added"):
        party.matvec(X, party.rerandomize(once))
    with pytest.raises(ValueError, match="integers"):
        party.dot(np.ones((3, 2)), d)
    with pytest.raises(ValueError, match="rows x m"):
        party.dot(np.ones((4, 2), dtype=np.int64), d)


def test_public_context_cannot_decrypt_nor_be_pickled_or_changed(holder, party):
    v = holder.encrypt_integers(np.array([1]), value_bits=2)
    with pytest.raises(PaillierKeyError):
        party.decrypt(v)
    with pytest.raises(PaillierKeyError):
        party.private_bytes()
    with pytest.raises(TypeError):
        pickle.dumps(holder)
    with pytest.raises(AttributeError):
        holder._secret = None  # type: ignore[misc]


def test_a_vector_under_another_key_fails_the_bound_check(holder, wide):
    other = LatticeContext.generate(holder.parameters)
    stranger = other.encrypt_integers(RNG.integers(-8, 8, 64), value_bits=4)
    with pytest.raises(CiphertextError, match="bound"):
        holder.decrypt(stranger)


def test_private_bytes_restore_the_key_holder(holder):
    again = LatticeContext.from_private_bytes(holder.public_bytes(), holder.private_bytes())
    v = holder.encrypt_integers(np.array([5, -7]), value_bits=4)
    assert list(again.decrypt(v)) == [5, -7]


# ---------------------------------------------------------------------------- sanitization


def test_sanitized_products_carry_only_fresh_noise(holder, party):
    """Whatever the computation, a sanitized ciphertext has the noise budget of a fresh
    ciphertext switched down: the computation's noise (a function of ``X``) is gone."""
    d = holder.encrypt_integers(RNG.integers(-16, 16, 4000), value_bits=5)
    X = RNG.integers(-16, 16, (4000, 2))
    product = party.matvec(X, party.dot(X, d))
    fresh = holder.rerandomize(holder.encrypt_integers(np.zeros(4000, np.int64), value_bits=1))
    assert holder.noise_budget(product) < holder.noise_budget(d) - 40
    assert abs(holder.noise_budget(party.rerandomize(product)) - holder.noise_budget(fresh)) <= 1


def test_the_noise_model_bounds_seals_noise(holder, party):
    params = holder.parameters
    d = holder.encrypt_integers(RNG.integers(-16, 16, 40_000), value_bits=5)
    X = RNG.integers(-16, 16, (40_000, 3))
    product = party.matvec(X, party.dot(X, d))
    data_bits = sum(params.coeff_bits[:-1])
    t_bits = max(params.plain_bits)
    predicted = noise_bits(params.poly_degree, t_bits, 2, params.terms_bits)
    # budget = log2(Q / t) - log2(noise) - 1 roughly: the model may not promise more
    assert holder.noise_budget(product) >= data_bits - t_bits - predicted - 1


# ---------------------------------------------------------------------------- wire


def test_vectors_round_trip_and_hostile_bytes_are_refused(holder, party):
    values = RNG.integers(-100, 100, 17_000)
    data = holder.ciphertexts_to_bytes(holder.encrypt_integers(values, value_bits=7))
    received = party.ciphertexts_from_bytes(data, max_count=17_000, count=17_000, sanitized=False)
    assert isinstance(received, LatticeVector) and len(received) == 17_000
    assert np.array_equal(holder.decrypt(received), values)
    with pytest.raises(CiphertextError, match="count"):
        party.ciphertexts_from_bytes(data, max_count=16_999)
    with pytest.raises(CiphertextError, match="re-randomized vector expected"):
        holder.ciphertexts_from_bytes(data, max_count=17_000, sanitized=True)
    with pytest.raises(CiphertextError, match="truncated"):
        party.ciphertexts_from_bytes(data[:-10], max_count=17_000)
    with pytest.raises(CiphertextError, match="trailing"):
        party.ciphertexts_from_bytes(data + b"\0", max_count=17_000)
    bad = bytearray(data)
    bad[40 + 16] ^= 0xFF  # inside the first SEAL header's parms id / body
    with pytest.raises(CiphertextError):
        party.ciphertexts_from_bytes(bytes(bad), max_count=17_000)
    forged = bytearray(data)
    struct.pack_into("<H", forged, 16, 70)  # a bound above the plaintext space
    with pytest.raises(CiphertextError, match="bound"):
        party.ciphertexts_from_bytes(bytes(forged), max_count=17_000)


def test_a_fresh_ciphertext_posing_as_sanitized_is_refused(holder, party):
    data = bytearray(
        holder.ciphertexts_to_bytes(holder.encrypt_integers(np.ones(3, np.int64), value_bits=2))
    )
    data[20] = 1  # the header's sanitized flag, on ciphertexts at the full level
    with pytest.raises(CiphertextError, match="wrong level|too long"):
        holder.ciphertexts_from_bytes(bytes(data), max_count=3, sanitized=True)


def test_seal_header_is_checked_before_seal_parses():
    with pytest.raises(CiphertextError, match="not a SEAL object"):
        seal_bfv.check_seal_header(b"\0" * 64, max_bytes=100, what="x")
    with pytest.raises(CiphertextError, match="at most"):
        seal_bfv.check_seal_header(b"\0" * 101, max_bytes=100, what="x")


def test_the_products_on_several_processes_equal_the_one_process_ones(holder, party):
    rows, m = 40_000, 3  # three row blocks, three columns
    d = RNG.integers(-(2**10), 2**10, rows)
    X = RNG.integers(-(2**8), 2**8, (rows, m))
    enc = holder.encrypt_integers(d, value_bits=11)
    pooled = party.dot(X, enc, workers=2)
    alone = party.dot(X, enc, workers=1)
    assert (pooled.length, pooled.value_bits, pooled.replicated) == (m, alone.value_bits, True)
    assert np.array_equal(holder.decrypt(pooled), holder.decrypt(alone))
    w = holder.encrypt_integers(RNG.integers(-100, 100, m), value_bits=7, replicated=True)
    image = party.matvec(X, w, workers=2)
    assert len(image.parts[0]) == 3 and len(image) == rows
    assert np.array_equal(holder.decrypt(image), holder.decrypt(party.matvec(X, w, workers=1)))


def test_a_lattice_matrix_encodes_once_for_both_products_on_workers(holder, party):
    from vfm_flower.lattice_matrix import LatticeMatrix  # noqa: PLC0415

    rows, m = 20_000, 3
    d = RNG.integers(-(2**10), 2**10, rows)
    X = RNG.integers(-(2**8), 2**8, (rows, m))
    s = RNG.integers(-(2**8), 2**8, m)
    enc_d = holder.encrypt_integers(d, value_bits=11)
    enc_s = holder.encrypt_integers(s, value_bits=9, replicated=True)
    for workers in (1, 2):
        with LatticeMatrix(party, X, workers=workers) as matrix:
            for _ in range(2):  # the second time from the cached plaintexts
                g = party.dot(matrix, enc_d)
                image = party.matvec(matrix, enc_s)
                assert np.array_equal(holder.decrypt(g), X.T @ d)
                assert np.array_equal(holder.decrypt(image), X @ s)
    with LatticeMatrix(party, X, workers=1) as matrix:
        other = LatticeContext.generate(holder.parameters)
        with pytest.raises(ValueError, match="another key"):
            other.dot(matrix, other.encrypt_integers(d, value_bits=11))


# ---------------------------------------------------------------------------- review findings


@pytest.mark.parametrize("bits", [20, 40, 58, 92, 150])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("terms", [0, 10, 18])
def test_every_chosen_parameter_set_keeps_the_sanitization_margin(bits, depth, terms):
    params = lattice_parameters(plaintext_bits=bits, plain_depth=depth, terms_bits=terms)
    need = noise_bits(params.poly_degree, max(params.plain_bits), depth, terms)
    assert params.max_sanitizable_noise_bits >= need
    assert params.security_bits == 128


def test_parameters_with_too_little_room_above_the_sanitized_level_are_refused():
    params = lattice_parameters(plaintext_bits=40, plain_depth=2).to_dict()
    with pytest.raises(ConfigurationError, match="too small"):
        LatticeParameters.from_dict(dict(params, sanitize_primes=4))


def test_additions_are_refused_before_the_noise_outgrows_sanitization(wide):
    """The noise bound grows with every operation; where it would break the margin the
    operation is refused, and up to there a sanitized result carries fresh noise only."""
    X = RNG.integers(-16, 16, (3000, 2))
    values = RNG.integers(-16, 16, 3000)
    d = wide.encrypt_integers(values, value_bits=5)
    acc = wide.matvec(X, wide.dot(X, d))
    expect, doublings = X @ (X.T @ values), 0
    fresh = wide.noise_budget(
        wide.rerandomize(wide.encrypt_integers(np.zeros(3000, np.int64), value_bits=1))
    )
    refused = None
    for _ in range(60):
        try:
            grown = wide.add(acc, acc)
            wide.rerandomize(grown)
        except CiphertextError as exc:
            refused = exc
            break
        acc, doublings = grown, doublings + 1
    assert refused is not None and refused.problem == "noise" and doublings > 10
    assert wide.noise_budget(acc) > 0
    assert abs(wide.noise_budget(wide.rerandomize(acc)) - fresh) <= 1
    got = wide.decrypt(wide.rerandomize(acc))
    assert list(got) == [int(v) << doublings for v in expect]


def test_zero_columns_and_zero_blocks_give_zero_sums(holder, party):
    X = RNG.integers(-8, 8, (20_000, 3))
    X[:, 1] = 0  # an all-zero column
    X[:16384, 2] = 0  # a column that is zero over a whole row block
    d = RNG.integers(-8, 8, 20_000)
    w = RNG.integers(-8, 8, 3)
    enc_w = holder.encrypt_integers(w, value_bits=4, replicated=True)
    assert np.array_equal(
        holder.decrypt(party.dot(X, holder.encrypt_integers(d, value_bits=4))), X.T @ d
    )
    assert np.array_equal(holder.decrypt(party.matvec(X, enc_w)), X @ w)
    X0 = np.zeros((100, 2), np.int64)
    assert (
        list(
            holder.decrypt(
                party.matvec(
                    X0,
                    enc_w[:2]
                    if False
                    else holder.encrypt_integers(w[:2], value_bits=4, replicated=True),
                )
            )
        )
        == [0] * 100
    )


def test_an_all_zero_ciphertext_is_refused(holder, party):
    seal = seal_bfv.sealapi()
    kit = party.kits[0]
    blank = seal.Ciphertext(kit.context)
    blank.resize(kit.context, 2)
    data = bytearray(
        holder.ciphertexts_to_bytes(holder.encrypt_integers(np.ones(3, np.int64), value_bits=2))
    )
    head = bytes(data[:28])
    body = seal_bfv.to_bytes(blank)
    forged = head + struct.pack("<I", len(body)) + body
    with pytest.raises(CiphertextError):
        party.ciphertexts_from_bytes(forged, max_count=3)


def test_declared_bounds_keep_the_data_out_of_the_headers(holder, party):
    from vfm_flower.lattice_matrix import LatticeMatrix  # noqa: PLC0415

    d = holder.encrypt_integers(RNG.integers(-8, 8, 500), value_bits=4)
    small, large = np.ones((500, 2), np.int64), np.full((500, 2), 1000, np.int64)
    bits = set()
    for X in (small, large):
        with LatticeMatrix(party, X, workers=1, value_bits=16) as matrix:
            bits.add(party.dot(matrix, d).value_bits)
    assert len(bits) == 1
    with pytest.raises(ValueError, match="declared bound"):
        LatticeMatrix(party, np.full((5, 1), 2**16), value_bits=16)
    v = party.add_plain(d, np.ones(500, np.int64), value_bits=30)
    assert v.value_bits == 31


def test_wide_values_under_a_forged_small_bound_fail_cleanly(wide):
    data = bytearray(
        wide.ciphertexts_to_bytes(
            wide.encrypt_integers(np.array([2**80], dtype=object), value_bits=81)
        )
    )
    struct.pack_into("<H", data, 16, 40)
    forged = wide.ciphertexts_from_bytes(bytes(data), max_count=1)
    with pytest.raises(CiphertextError, match="bound"):
        wide.decrypt(forged)


def test_floats_in_object_arrays_are_refused_and_wide_unsigned_values_kept(holder, wide):
    with pytest.raises(ValueError, match="integers"):
        holder.encrypt_integers(np.array([2.7, 1], dtype=object), value_bits=4)
    big = np.array([2**63 + 5], dtype=np.uint64)
    assert list(wide.decrypt(wide.encrypt_integers(big, value_bits=64))) == [2**63 + 5]
