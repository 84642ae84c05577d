"""Tests of the Paillier protocol steps (vfm_flower.paillier) and fast paths (vfm_flower.hazmat)."""

from __future__ import annotations

import numpy as np
import pytest
from gmpy2 import mpz
from phe import EncryptedNumber
from phe import paillier as phe_paillier

from vfm_flower import hazmat as H
from vfm_flower import paillier as P
from vfm_flower.errors import PolicyViolation
from vfm_flower.hazmat import paillier_djn

ROWS = 300


@pytest.fixture(scope="session")
def keypair() -> tuple[phe_paillier.PaillierPublicKey, phe_paillier.PaillierPrivateKey]:
    return P.generate_paillier_keypair(2048)


@pytest.fixture(scope="session")
def encryptor(keypair) -> H.DJNEncryptor:
    return H.DJNEncryptor(keypair[0])


def _features(rows: int, seed: int) -> np.ndarray:
    """Marketing-like standardized columns plus edge cases (test data only)."""
    rng = np.random.default_rng(seed)

    def std(c: np.ndarray) -> np.ndarray:
        return (c - c.mean()) / c.std()

    cols = [
        rng.integers(0, 2, rows).astype(float),  # raw binary
        std(rng.binomial(1, 0.1, rows).astype(float)),  # standardized rare flag
        rng.integers(0, 10, rows).astype(float),  # small integers
        std(rng.integers(0, 10, rows).astype(float)),  # standardized levels
        -rng.integers(0, 4, rows).astype(float),  # non-positive integers
        rng.normal(size=rows),  # continuous, many distinct values
        std(rng.lognormal(0, 1, rows)),  # skewed continuous
        rng.normal(scale=1000.0, size=rows),  # wide range
        np.zeros(rows),  # all zero
        np.full(rows, -2.75),  # constant
    ]
    return np.column_stack(cols)


def _exact_gradient(X: np.ndarray, d: np.ndarray, bound: float | None = 1.0) -> list[int]:
    d_q, _ = H.quantize_residuals(d, bound=bound)
    X_q = H.quantize_features(X)
    return [sum(int(a) * int(b) for a, b in zip(X_q[:, j], d_q)) for j in range(X.shape[1])]


# ---------------------------------------------------------------------------- keys


def test_keys_shorter_than_2048_bits_are_refused() -> None:
    with pytest.raises(PolicyViolation) as info:
        P.generate_paillier_keypair(1024)
    assert info.value.rule == "paillier_bits"
    with pytest.raises(PolicyViolation):
        P.check_key_bits(2047)
    with pytest.raises(PolicyViolation):
        P.check_key_bits(4096, minimum=1024)
    small_public, _ = phe_paillier.generate_paillier_keypair(n_length=1024)
    with pytest.raises(PolicyViolation):
        H.DJNEncryptor(small_public)
    with pytest.raises(PolicyViolation):
        P.public_key_from_bytes(P.public_key_to_bytes(small_public))
    P.check_key_bits(3072, minimum=3072)
    with pytest.raises(PolicyViolation):
        P.check_key_bits(2048, minimum=3072)  # an agreement may require more


def test_public_key_codec(keypair) -> None:
    public, _ = keypair
    data = P.public_key_to_bytes(public)
    assert len(data) == 256
    assert P.public_key_from_bytes(data) == public
    with pytest.raises(ValueError, match="leading zero"):
        P.public_key_from_bytes(b"\x00" + data)
    with pytest.raises(ValueError):
        P.public_key_from_bytes(data[:-1] + bytes([data[-1] & 0xFE]))  # even modulus
    with pytest.raises(ValueError):
        P.public_key_from_bytes(b"")


def test_private_key_codec(keypair) -> None:
    public, private = keypair
    data = P.private_key_to_bytes(private)
    back = P.private_key_from_bytes(data)
    assert back == private and back.public_key == public
    with pytest.raises(ValueError, match="magic"):
        P.private_key_from_bytes(b"XXXX" + data[4:])
    with pytest.raises(ValueError, match="length"):
        P.private_key_from_bytes(data[:-1])
    width = (len(data) - 6) // 2
    same = data[:6] + data[6 : 6 + width] * 2
    with pytest.raises(ValueError, match="distinct primes"):
        P.private_key_from_bytes(same)


# ---------------------------------------------------------------------------- encryption


def test_djn_ciphertexts_decrypt_with_phe(keypair, encryptor) -> None:
    public, private = keypair
    values = [0, 1, -1, 12345, -987654321, 2**100, -(2**100)]
    cts = H.encrypt_vector(public, np.array(values, dtype=object), encryptor=encryptor)
    for value, c in zip(values, cts):
        assert 0 < c < public.nsquare
        assert private.decrypt(EncryptedNumber(public, int(c), 0)) == value
    assert H.decrypt_vector(private, cts) == values
    # Probabilistic: two encryptions of the same value differ.
    again = H.encrypt_vector(public, np.array(values, dtype=object), encryptor=encryptor)
    assert all(a != b for a, b in zip(cts, again))


def test_crt_decryption_reads_phe_ciphertexts(keypair) -> None:
    public, private = keypair
    values = [0, 7, -7, 2**60]
    cts = [public.encrypt(v).ciphertext() for v in values]
    assert H.decrypt_vector(private, cts) == values
    decryptor = P.CRTDecryptor(private)
    assert decryptor.key_bits == 2048
    with pytest.raises(ValueError, match="out of range"):
        decryptor.decrypt(public.nsquare)


def test_crt_encryptor_matches_phe(keypair) -> None:
    public, private = keypair
    enc = H.DJNEncryptor(public, private=private)
    assert "crt=True" in repr(enc)
    values = [0, 5, -5, 2**70, -(2**70)]
    cts = enc.encrypt_ints(values)
    assert [private.decrypt(EncryptedNumber(public, int(c), 0)) for c in cts] == values
    enc.fill_pool(3, workers=2)
    assert H.decrypt_vector(private, enc.take_obfuscators(3)) == [0, 0, 0]
    parallel = H.encrypt_vector(public, np.arange(-10, 10), encryptor=enc, workers=2)
    assert H.decrypt_vector(private, parallel) == list(range(-10, 10))
    _, other_private = P.generate_paillier_keypair(2048)
    with pytest.raises(ValueError, match="does not belong"):
        H.DJNEncryptor(public, private=other_private)


def test_encryptor_pool_and_parameters(keypair) -> None:
    public, private = keypair
    enc = H.DJNEncryptor(public)
    assert enc.exponent_bits == 256 == H.djn_exponent_bits(2048)
    assert H.djn_exponent_bits(7680) == 384 and H.djn_exponent_bits(15360) == 512
    enc.fill_pool(5, workers=1)
    assert enc.pooled == 5
    cts = enc.encrypt_ints([3, -4])
    assert enc.pooled == 3
    assert H.decrypt_vector(private, cts) == [3, -4]
    # An obfuscator is an encryption of zero.
    assert H.decrypt_vector(private, enc.take_obfuscators(4)) == [0, 0, 0, 0]
    assert enc.pooled == 0
    assert "pooled=0" in repr(enc)
    with pytest.raises(ValueError, match="multiple of 8"):
        H.DJNEncryptor(public, exponent_bits=100)
    other_public, _ = P.generate_paillier_keypair(2048)
    with pytest.raises(ValueError, match="another public key"):
        H.encrypt_vector(other_public, np.array([1]), encryptor=enc)
    with pytest.raises(ValueError, match="too large"):
        H.encrypt_vector(public, np.array([public.n // 2], dtype=object), encryptor=enc)
    with pytest.raises(ValueError, match="integer"):
        H.encrypt_vector(public, np.array([0.5]), encryptor=enc)


def test_low_cardinality_columns_share_buckets(keypair, encryptor) -> None:
    from vfm_flower.hazmat import paillier_dot

    public, private = keypair
    rng = np.random.default_rng(5)
    rows = 400
    X = np.column_stack(
        [
            *(rng.binomial(1, p, rows) for p in (0.05, 0.3, 0.5, 0.9)),  # flags, one mostly 1
            *(rng.integers(-3, 4, rows) * 4096 for _ in range(3)),  # signed levels
            rng.integers(0, 10, rows),
            np.full(rows, 7),  # a constant column
            rng.integers(-(2**17), 2**17, rows),  # continuous: not grouped
        ]
    ).astype(np.int64)
    columns = np.ascontiguousarray(X.T)
    plans = [paillier_dot._plan_column(c) for c in columns]
    groups = paillier_dot._joint_groups(columns, plans)
    assert groups and all(9 not in g.columns for g in groups)
    assert sum(g.cost for g in groups) < sum(plans[j].cost for g in groups for j in g.columns)
    d = rng.integers(-(2**40), 2**40, rows)
    cts = encryptor.encrypt_ints([int(v) for v in d])
    expected = [int(v) for v in X.astype(object).T @ d.astype(object)]
    for workers in (1, 2):
        got = H.encrypted_dot_products(cts, X, public.nsquare, workers=workers)
        assert H.decrypt_vector(private, got) == expected


def test_an_exported_pool_is_used_once_by_another_encryptor(keypair) -> None:
    public, private = keypair
    maker = H.DJNEncryptor(public, private=private)
    maker.fill_pool(4, workers=1)
    blob = maker.export_pool()
    assert maker.pooled == 0 and maker.export_pool() == b""
    user = H.DJNEncryptor(public)  # another encryptor of the key (a later message's process)
    user.import_pool(blob)
    assert user.pooled == 4
    cts = user.encrypt_ints([7, -2, 0, 5])
    assert user.pooled == 0 and len(set(cts)) == 4
    assert H.decrypt_vector(private, cts) == [7, -2, 0, 5]
    with pytest.raises(ValueError, match="multiple of"):
        user.import_pool(blob[:-1])
    with pytest.raises(ValueError, match="out of range"):
        user.import_pool(bytes(len(blob)))
    assert user.pooled == 0


def test_process_pool_paths_match(keypair) -> None:
    public, private = keypair
    values = list(range(-20, 20))
    cts = H.encrypt_vector(public, np.array(values), workers=2)
    assert H.decrypt_vector(private, cts) == values
    enc = H.DJNEncryptor(public)
    enc.fill_pool(6, workers=2)
    assert enc.pooled == 6
    X_q = H.quantize_features(_features(40, 3))
    serial = H.encrypted_dot_products(cts, X_q, public.nsquare, workers=1)
    parallel = H.encrypted_dot_products(cts, X_q, public.nsquare, workers=2)
    expected = [int(v) for v in X_q.T.astype(object) @ np.array(values, dtype=object)]
    assert H.decrypt_vector(private, serial) == expected
    assert H.decrypt_vector(private, parallel) == expected


def test_broken_process_pool_falls_back_to_in_process(keypair, monkeypatch) -> None:
    from concurrent.futures.process import BrokenProcessPool

    class BrokenPool:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self) -> BrokenPool:
            return self

        def __exit__(self, *exc) -> None:
            return None

        def map(self, fn, payloads):
            raise BrokenProcessPool("no children here")

    public, private = keypair
    monkeypatch.setattr(paillier_djn, "ProcessPoolExecutor", BrokenPool)
    cts = H.encrypt_vector(public, np.arange(-3, 3), workers=2)
    X_int = np.arange(12).reshape(6, 2) - 5
    result = H.encrypted_dot_products(cts, X_int, public.nsquare, workers=2)
    assert H.decrypt_vector(private, result) == [int(v) for v in X_int.T @ np.arange(-3, 3)]


# ---------------------------------------------------------------------------- dot products


def test_encrypted_dot_products_are_exact(keypair, encryptor) -> None:
    public, private = keypair
    rng = np.random.default_rng(11)
    d = rng.integers(-(2**33), 2**33, ROWS)
    X_q = H.quantize_features(_features(ROWS, 5))
    X_int = np.column_stack([X_q, rng.integers(-(2**40), 2**40, ROWS), rng.integers(-3, 4, ROWS)])
    cts = H.encrypt_vector(public, d, encryptor=encryptor)
    result = H.encrypted_dot_products(cts, X_int, public.nsquare)
    expected = [int(v) for v in X_int.T.astype(object) @ d.astype(object)]
    assert H.decrypt_vector(private, result) == expected
    # phe's private key reads them too.
    for c, e in zip(result, expected):
        assert private.decrypt(EncryptedNumber(public, int(c), 0)) == e


def test_phe_ciphertexts_work_in_our_dot_product(keypair) -> None:
    public, private = keypair
    d = [5, -3, 0, 11, -8, 2]
    cts = [public.encrypt(v).ciphertext() for v in d]
    X_int = np.array(
        [[1, 0, -2], [0, 7, 3], [1, 1, 1], [0, -5, 0], [1, 0, 9], [1, 2, -4]], dtype=np.int64
    )
    result = H.encrypted_dot_products(cts, X_int, public.nsquare)
    expected = [int(v) for v in X_int.T @ np.array(d)]
    assert [private.decrypt(EncryptedNumber(public, int(c), 0)) for c in result] == expected


def test_dot_products_validate_inputs(keypair) -> None:
    public, _ = keypair
    with pytest.raises(ValueError, match="rows"):
        H.encrypted_dot_products([mpz(2)] * 3, np.zeros((4, 2), np.int64), public.nsquare)
    with pytest.raises(ValueError, match="integer matrix"):
        H.encrypted_dot_products([mpz(2)] * 4, np.zeros((4, 2)), public.nsquare)
    with pytest.raises(ValueError, match="2\\*\\*61"):
        H.encrypted_dot_products([mpz(2)], np.array([[2**62]], np.int64), public.nsquare)


# ---------------------------------------------------------------------------- full backward step


# ---------------------------------------------------------------------------- packing


def test_slot_layout_has_no_overflow_between_slots() -> None:
    layout = H.slot_layout(10_000, 33, 2048)
    assert layout.mask_bits == layout.value_bits + 1 + P.STATISTICAL_SECURITY_BITS
    largest = (2**layout.value_bits - 1) + 2**layout.value_bits + (2**layout.mask_bits - 1)
    smallest = -(2**layout.value_bits - 1) + 2**layout.value_bits + 0
    assert 0 < smallest and largest < 2**layout.slot_bits
    assert layout.slots_per_ciphertext * layout.slot_bits <= 2047
    assert (layout.slots_per_ciphertext + 1) * layout.slot_bits > 2047
    with pytest.raises(ValueError, match="does not fit"):
        H.slot_layout(10, 33, 2048, feature_value_bits=2000)
    with pytest.raises(ValueError, match="40 bits"):
        H.slot_layout(10, 33, 2048, statistical_bits=20)


def test_unpack_rejects_bits_above_the_last_slot() -> None:
    assert H.unpack_plaintext((5 << 10) | 3, slot_bits=10, count=2) == [3, 5]
    with pytest.raises(ValueError, match="does not fit"):
        H.unpack_plaintext(1 << 20, slot_bits=10, count=2)
    with pytest.raises(ValueError, match="does not fit"):
        H.unpack_plaintext(-1, slot_bits=10, count=2)


# ---------------------------------------------------------------------------- codecs


def test_ciphertext_codec_checks_widths(keypair, encryptor) -> None:
    public, _ = keypair
    cts = encryptor.encrypt_ints([1, 2, 3])
    width = P.ciphertext_width(public)
    assert width == 512
    data = P.ciphertexts_to_bytes(cts, public)
    assert len(data) == 3 * width
    assert P.ciphertexts_from_bytes(data, public) == cts
    assert P.ciphertexts_from_bytes(data, public, count=3) == cts
    with pytest.raises(ValueError, match="multiple of 512"):
        P.ciphertexts_from_bytes(data[:-1], public)
    with pytest.raises(ValueError, match="expected 2"):
        P.ciphertexts_from_bytes(data, public, count=2)
    with pytest.raises(ValueError, match="out of range"):
        P.ciphertexts_from_bytes(bytes(width), public)
    with pytest.raises(ValueError, match="out of range"):
        P.ciphertexts_from_bytes(b"\xff" * width, public)
    with pytest.raises(ValueError, match="out of range"):
        P.ciphertexts_to_bytes([public.nsquare], public)


# ---------------------------------------------------------------------------- quantization


def test_quantization_checks() -> None:
    with pytest.raises(ValueError, match="NaN"):
        H.quantize_features(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="standardize"):
        H.quantize_features(np.array([[2.0**24]]))
    with pytest.raises(ValueError, match="exceeds the declared bound"):
        H.quantize_residuals(np.array([0.5, 1.5]), bound=1.0)
    d_q, bits = H.quantize_residuals(np.array([0.5, -1.0]), bound=1.0)
    assert list(d_q) == [2**31, -(2**32)] and bits == 33
    _, default_bits = H.quantize_residuals(np.array([3.0, -0.1]))
    assert default_bits == 35  # bound rounded up to 4 = 2**2
    assert H.encode_signed(-5, 101) == 96 and H.decode_signed(96, 101) == -5
