"""ECDH-PSI core: correctness against a plain intersection, order, gates, codecs, leakage."""

from __future__ import annotations

import logging
import pickle
import random
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest

from vfm_flower.errors import ConfigurationError, DataError, PolicyViolation
from vfm_flower.normalize import normalize_ids
from vfm_flower.psi import (
    JointAlignment,
    PsiSecret,
    align_in_process,
    blind_points,
    blinding_pool,
    check_received_points,
    check_set_size,
    first_blind_label_owner,
    first_blind_passive,
    hash_ids_to_points,
    local_rows_from_positions,
    match_joint_rows,
    points_from_bytes,
    points_to_bytes,
    positions_from_bytes,
    positions_to_bytes,
    psi_domain,
    second_blind,
    secure_permutation,
)

DOMAIN = psi_domain("agreement-test", "run-1")


def email_ids(numbers: list[int]) -> list[str]:
    return [f"customer{i}@example.com" for i in numbers]


def random_points(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    points[:, 31] &= 0x7F
    return points


def assert_aligned(party_ids: dict[str, list[str]], result: dict[str, np.ndarray]) -> list[str]:
    """Every party's rows hold the same ids in the same order, = the plain intersection."""
    expected = set.intersection(*(set(ids) for ids in party_ids.values()))
    columns = {p: [party_ids[p][i] for i in rows.tolist()] for p, rows in result.items()}
    reference = next(iter(columns.values()))
    for party, ids in columns.items():
        assert result[party].dtype == np.int64
        assert ids == reference, f"party {party} is misaligned"
        assert len(set(result[party].tolist())) == len(ids)
    assert set(reference) == expected
    assert len(reference) == len(expected)
    return reference


# ----------------------------------------------------------------------------- hashing


def test_domain_is_unambiguous() -> None:
    assert psi_domain("ab", "c") != psi_domain("a", "bc")
    assert psi_domain("a", "run-1") != psi_domain("a", "run-2")
    with pytest.raises(ConfigurationError):
        psi_domain("", "run")


def test_hash_to_points() -> None:
    ids = email_ids(list(range(200)))
    points = hash_ids_to_points(ids, DOMAIN)
    assert points.shape == (200, 32) and points.dtype == np.uint8
    assert not np.any(points[:, 31] & 0x80)
    assert np.array_equal(points, hash_ids_to_points(ids, DOMAIN))
    assert len({row.tobytes() for row in points}) == 200
    other = hash_ids_to_points(ids, psi_domain("agreement-test", "run-2"))
    assert not np.any(np.all(points == other, axis=1))
    assert hash_ids_to_points([], DOMAIN).shape == (0, 32)
    # Every point is on Curve25519, not on its twist (Euler's criterion, pure Python).
    prime, a = 2**255 - 19, 486662
    for row in points:
        u = int.from_bytes(row.tobytes(), "little")
        assert u < prime
        assert pow((u * (u * (u + a) + 1)) % prime, (prime - 1) // 2, prime) == 1
    with pytest.raises(DataError, match="row 2 is not a normalized id string"):
        hash_ids_to_points(["a", 5], DOMAIN)  # type: ignore[list-item]


# ----------------------------------------------------------------------------- secret


def test_hashing_in_a_pool_agrees() -> None:
    ids = email_ids(list(range(3000)))
    with blinding_pool(2) as pool:
        pooled = hash_ids_to_points(ids, DOMAIN, workers=2, chunk_size=256, executor=pool)
        assert np.array_equal(pooled, hash_ids_to_points(ids, DOMAIN, workers=1))
        with pytest.raises(DataError, match="row 2001 is not a normalized id string"):
            bad = ids[:2000] + [None] + ids[2001:]
            hash_ids_to_points(bad, DOMAIN, workers=2, chunk_size=256, executor=pool)  # type: ignore[arg-type]


def test_secret() -> None:
    a, b = PsiSecret.generate(), PsiSecret.generate()
    assert a != b
    assert PsiSecret.from_bytes(a.to_bytes()) == a
    assert a.to_bytes().hex() not in repr(a)
    with pytest.raises(ConfigurationError, match="32 bytes"):
        PsiSecret.from_bytes(b"short")
    with pytest.raises(AttributeError):
        a._key = b"x" * 32  # type: ignore[misc]
    with pytest.raises(TypeError):
        pickle.dumps(a)


# ----------------------------------------------------------------------------- blinding


def test_blinding_commutes() -> None:
    points = hash_ids_to_points(email_ids(list(range(64))), DOMAIN)
    a, b = PsiSecret.generate(), PsiSecret.generate()
    ab = blind_points(blind_points(points, a), b)
    ba = blind_points(blind_points(points, b), a)
    assert np.array_equal(ab, ba)
    assert not np.array_equal(blind_points(points, a), blind_points(points, b))


def test_blinding_is_rfc7748_x25519_as_in_openssl() -> None:
    """libsodium's blinding is byte for byte OpenSSL's X25519 (through ``cryptography``)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )

    points = np.vstack(
        [hash_ids_to_points(email_ids(list(range(40))), DOMAIN), random_points(24, seed=7)]
    )
    secret = PsiSecret.generate()
    private = X25519PrivateKey.from_private_bytes(secret.to_bytes())
    expected = [private.exchange(X25519PublicKey.from_public_bytes(p.tobytes())) for p in points]
    assert blind_points(points, secret).tobytes() == b"".join(expected)


def test_blinding_chunked_and_pooled_agree() -> None:
    points = random_points(5000, seed=1)
    secret = PsiSecret.generate()
    reference = blind_points(points, secret, workers=1)
    assert np.array_equal(blind_points(points, secret, workers=1, chunk_size=7), reference)
    with blinding_pool(2) as pool:
        pooled = blind_points(points, secret, workers=2, chunk_size=512, executor=pool)
        assert np.array_equal(pooled, reference)
        bad = points.copy()
        bad[4321] = 0  # u = 0: low order
        with pytest.raises(DataError, match="row 4322: .*low order"):
            blind_points(bad, secret, workers=2, chunk_size=512, executor=pool)


class _BrokenPool(Executor):
    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        raise BrokenProcessPool("worker died")


def test_broken_pool_falls_back_to_this_process(caplog: pytest.LogCaptureFixture) -> None:
    points = random_points(100, seed=14)
    secret = PsiSecret.generate()
    with caplog.at_level(logging.WARNING):
        result = blind_points(points, secret, workers=2, executor=_BrokenPool())
    assert np.array_equal(result, blind_points(points, secret, workers=1))
    assert "pool broke" in caplog.text


def test_bad_worker_and_chunk_settings() -> None:
    points = random_points(3, seed=15)
    with pytest.raises(ConfigurationError, match="workers"):
        blind_points(points, PsiSecret.generate(), workers=0)
    with pytest.raises(ConfigurationError, match="chunk_size"):
        blind_points(points, PsiSecret.generate(), chunk_size=0)
    with pytest.raises(ConfigurationError, match="PsiSecret"):
        blind_points(points, b"k" * 32)  # type: ignore[arg-type]


def test_low_order_point_in_process() -> None:
    points = random_points(10, seed=2)
    points[3] = 0
    points[3, 0] = 1  # u = 1: order 4
    with pytest.raises(DataError, match="row 4: .*low order"):
        blind_points(points, PsiSecret.generate())


def test_blind_rejects_bad_arrays() -> None:
    secret = PsiSecret.generate()
    with pytest.raises(DataError, match=r"\(n, 32\) uint8"):
        blind_points(np.zeros((3, 31), dtype=np.uint8), secret)
    with pytest.raises(DataError, match=r"\(n, 32\) uint8"):
        blind_points(np.zeros((3, 32), dtype=np.int64), secret)
    assert blind_points(np.zeros((0, 32), dtype=np.uint8), secret).shape == (0, 32)


def test_first_blind_passive_shuffles_secretly() -> None:
    points = hash_ids_to_points(email_ids(list(range(300))), DOMAIN)
    secret = PsiSecret.generate()
    blinded, perm = first_blind_passive(points, secret)
    assert sorted(perm.tolist()) == list(range(300))
    assert np.array_equal(blinded, blind_points(points[perm], secret))
    _, perm2 = first_blind_passive(points, secret)
    assert not np.array_equal(perm, perm2)
    assert not np.array_equal(perm, np.arange(300))


def test_blinded_payloads_reveal_no_id_or_hash() -> None:
    ids = email_ids(list(range(500)))
    points = hash_ids_to_points(ids, DOMAIN)
    secret = PsiSecret.generate()
    payloads = [
        points_to_bytes(first_blind_label_owner(points, secret)),
        points_to_bytes(first_blind_passive(points, secret)[0]),
    ]
    for payload in payloads:
        blinded = points_from_bytes(payload)
        assert not np.any((blinded[:, None, :] == points[None, :, :]).all(axis=2))
        for i in range(0, 500, 25):
            assert points[i].tobytes() not in payload
            assert points[i, :16].tobytes() not in payload
            assert ids[i].encode() not in payload


def test_secure_permutation() -> None:
    for n in (0, 1, 2, 1000):
        perm = secure_permutation(n)
        assert perm.dtype == np.int64
        assert sorted(perm.tolist()) == list(range(n))


# ----------------------------------------------------------------------------- whole protocol


@pytest.mark.parametrize(
    ("n_lo", "n_passive", "shared"),
    [(50, 70, 20), (30, 30, 30), (40, 25, 1), (1, 1, 1), (5000, 5000, 2500)],
)
def test_two_party_alignment_equals_intersection(n_lo: int, n_passive: int, shared: int) -> None:
    rng = random.Random(n_lo * 7919 + n_passive)
    universe = rng.sample(range(10**9), n_lo + n_passive - shared)
    lo = email_ids(universe[:n_lo])
    passive = email_ids(universe[n_lo - shared :])
    rng.shuffle(lo)
    rng.shuffle(passive)
    party_ids = {"insurer": lo, "bank": passive}
    result = align_in_process(party_ids, "insurer", domain=DOMAIN)
    assert len(assert_aligned(party_ids, result)) == shared


def test_random_sets_and_common_order_is_random() -> None:
    rng = random.Random(11)
    lo = email_ids(rng.sample(range(3000), 1200))
    passive = email_ids(rng.sample(range(3000), 900))
    party_ids = {"lo": lo, "p": passive}
    first = align_in_process(party_ids, "lo", domain=DOMAIN)
    joint = assert_aligned(party_ids, first)
    assert joint != sorted(joint)  # not LO's order nor sorted: a CSPRNG permutation
    assert first["lo"].tolist() != sorted(first["lo"].tolist())
    second = align_in_process(party_ids, "lo", domain=DOMAIN)
    assert_aligned(party_ids, second)
    assert first["lo"].tolist() != second["lo"].tolist()


def test_three_and_four_parties_align_on_the_joint_rows() -> None:
    rng = random.Random(5)
    universe = list(range(2000))
    party_ids = {
        name: email_ids(rng.sample(universe, size))
        for name, size in (("insurer", 1500), ("bank", 1400), ("broker", 1300), ("telco", 1600))
    }
    three = {k: party_ids[k] for k in ("insurer", "bank", "broker")}
    assert_aligned(three, align_in_process(three, "insurer", domain=DOMAIN))
    assert_aligned(party_ids, align_in_process(party_ids, "bank", domain=DOMAIN))


def test_normalization_makes_differently_written_ids_meet() -> None:
    lo_raw = ["Alice@Example.com", "bob@example.com ", "carol@example.com"]
    passive_raw = [" BOB@EXAMPLE.COM", "dave@example.com", "alice@example.com"]
    lo = normalize_ids([lo_raw], "email", party="insurer")
    passive = normalize_ids([passive_raw], "email", party="bank")
    result = align_in_process({"insurer": lo, "bank": passive}, "insurer", domain=DOMAIN)
    pairs = sorted(
        zip(
            [lo_raw[i] for i in result["insurer"].tolist()],
            [passive_raw[i] for i in result["bank"].tolist()],
        )
    )
    assert pairs == [
        ("Alice@Example.com", "alice@example.com"),
        ("bob@example.com ", " BOB@EXAMPLE.COM"),
    ]


def test_pooled_run_matches(caplog: pytest.LogCaptureFixture) -> None:
    lo = email_ids(list(range(0, 9000)))
    passive = email_ids(list(range(4500, 13500)))
    party_ids = {"lo": lo, "p": passive}
    caplog.set_level(logging.DEBUG)
    with blinding_pool(2) as pool:
        result = align_in_process(party_ids, "lo", domain=DOMAIN, workers=2, executor=pool)
    assert len(assert_aligned(party_ids, result)) == 4500
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "example.com" not in logged and "customer" not in logged


def test_no_overlap_hits_the_gate_or_is_empty_when_allowed() -> None:
    party_ids = {"lo": email_ids([1, 2, 3]), "p": email_ids([4, 5, 6])}
    with pytest.raises(PolicyViolation) as err:
        align_in_process(party_ids, "lo", domain=DOMAIN)
    assert err.value.rule == "min_intersection"
    result = align_in_process(party_ids, "lo", domain=DOMAIN, min_intersection=0)
    assert result["lo"].shape == (0,) and result["p"].shape == (0,)


def test_gate_reveals_only_that_the_intersection_is_too_small() -> None:
    lo = email_ids(list(range(100)))
    passive = email_ids(list(range(63, 300)))  # 37 shared
    with pytest.raises(PolicyViolation) as err:
        align_in_process({"lo": lo, "p": passive}, "lo", domain=DOMAIN, min_intersection=50)
    assert err.value.rule == "min_intersection"
    message = str(err.value)
    assert "37" not in message
    assert "example.com" not in message
    result = align_in_process({"lo": lo, "p": passive}, "lo", domain=DOMAIN, min_intersection=37)
    assert len(result["lo"]) == 37


def test_gate_runs_before_anything_is_revealed() -> None:
    points = random_points(20, seed=3)
    with pytest.raises(PolicyViolation, match="min_intersection"):
        match_joint_rows({"p": points}, {"p": points[:5]}, min_intersection=6)
    alignment = match_joint_rows({"p": points}, {"p": points[:5]}, min_intersection=5)
    assert isinstance(alignment, JointAlignment) and len(alignment) == 5
    # a passive party that returns more (or fewer) label-owner ids than the LO has: refused
    with pytest.raises(DataError, match="returned 20 doubly blinded label-owner ids"):
        match_joint_rows({"p": points}, {"p": points[:5]}, min_intersection=5, label_owner_rows=19)


def test_max_set_size() -> None:
    with pytest.raises(PolicyViolation) as err:
        check_set_size(11, 10, "bank")
    assert err.value.rule == "max_set_size" and "bank" in str(err.value)
    check_set_size(10, 10, "bank")
    party_ids = {"lo": email_ids(list(range(5))), "p": email_ids(list(range(20)))}
    with pytest.raises(PolicyViolation, match="max_set_size.*'p'"):
        align_in_process(party_ids, "lo", domain=DOMAIN, max_set_size=10)
    with pytest.raises(PolicyViolation, match="max_set_size"):
        check_received_points(random_points(11, seed=4), max_set_size=10, party="bank")


def test_received_points_are_checked() -> None:
    points = random_points(5, seed=5)
    assert check_received_points(points, max_set_size=5, party="bank").shape == (5, 32)
    bad = points.copy()
    bad[2, 31] |= 0x80
    with pytest.raises(DataError, match="party 'bank': 1 points are not canonical"):
        check_received_points(bad, max_set_size=5, party="bank")
    with pytest.raises(DataError, match="party 'bank'"):
        check_received_points(points.astype(np.int16), max_set_size=5, party="bank")


def test_duplicate_and_empty_ids_name_party_and_count() -> None:
    dup = ["secret-a@x.com", "secret-b@x.com", "secret-a@x.com"]
    with pytest.raises(DataError) as err:
        align_in_process({"lo": email_ids([1, 2]), "bank": dup}, "lo", domain=DOMAIN)
    message = str(err.value)
    assert "party 'bank'" in message and "1 rows repeat" in message
    assert "secret" not in message
    with pytest.raises(DataError, match="party 'bank': the id table is empty"):
        align_in_process({"lo": email_ids([1]), "bank": []}, "lo", domain=DOMAIN)


def test_configuration_errors() -> None:
    party_ids = {"lo": email_ids([1]), "p": email_ids([1])}
    with pytest.raises(ConfigurationError, match="label owner"):
        align_in_process(party_ids, "nobody", domain=DOMAIN)
    with pytest.raises(ConfigurationError, match="passive"):
        align_in_process({"lo": email_ids([1])}, "lo", domain=DOMAIN)
    with pytest.raises(ConfigurationError, match="min_intersection"):
        align_in_process(party_ids, "lo", domain=DOMAIN, min_intersection=-1)


# ----------------------------------------------------------------------------- matching


def test_matching_rejects_duplicated_blinded_ids() -> None:
    points = random_points(10, seed=6)
    with pytest.raises(DataError, match="party 'bank' contain 1 duplicates"):
        match_joint_rows({"bank": points}, {"bank": points[[0, 1, 2, 2]]}, min_intersection=1)
    lo = points.copy()
    lo[5] = lo[4]
    with pytest.raises(DataError, match="party 'bank' contain 1 duplicates"):
        match_joint_rows({"bank": lo}, {"bank": points}, min_intersection=1)


def test_matching_input_errors() -> None:
    points = random_points(4, seed=7)
    with pytest.raises(DataError, match="same, non-empty set"):
        match_joint_rows({"a": points}, {"b": points}, min_intersection=1)
    with pytest.raises(DataError, match="party 'b' returned 3"):
        match_joint_rows(
            {"a": points, "b": points[:3]}, {"a": points, "b": points}, min_intersection=1
        )


def test_matching_on_64_bit_key_collisions_is_exact() -> None:
    points = random_points(50, seed=8)
    points[:, :8] = 0  # every row shares its first 8 bytes: the exact fallback path
    perm = np.random.default_rng(9).permutation(50)
    passive = points[perm][:30]
    alignment = match_joint_rows({"p": points}, {"p": passive}, min_intersection=1)
    lo_rows = alignment.label_owner_rows
    assert len(lo_rows) == 30
    assert np.array_equal(points[lo_rows], passive[alignment.passive_positions["p"]])
    lonely = points.copy()
    lonely[0, 8:] = 0  # first 8 bytes equal to a passive key, rest differs: must not match
    alignment = match_joint_rows({"p": lonely[1:]}, {"p": lonely[:1]}, min_intersection=0)
    assert len(alignment) == 0


def test_matching_verifies_beyond_the_64_bit_key() -> None:
    points = random_points(20, seed=10)
    impostor = points[:10].copy()
    impostor[:, 20] ^= 1  # same first 8 bytes, different point
    alignment = match_joint_rows({"p": impostor}, {"p": points}, min_intersection=0)
    assert len(alignment) == 0


def test_local_rows_from_positions() -> None:
    perm = np.array([3, 0, 2, 1], dtype=np.int64)
    assert local_rows_from_positions(np.array([2, 0]), perm).tolist() == [2, 3]
    with pytest.raises(DataError, match="out of range"):
        local_rows_from_positions(np.array([4]), perm)
    with pytest.raises(DataError, match="repeat"):
        local_rows_from_positions(np.array([1, 1]), perm)
    with pytest.raises(DataError, match="1-D integer"):
        local_rows_from_positions(np.array([0.5]), perm)


def test_second_blind_keeps_order() -> None:
    points = random_points(40, seed=12)
    a, b = PsiSecret.generate(), PsiSecret.generate()
    once = first_blind_label_owner(points, a)
    twice = second_blind(once[::-1], b)
    assert np.array_equal(twice[::-1], second_blind(once, b))


# ----------------------------------------------------------------------------- codecs


def test_codecs_round_trip_and_reject_bad_lengths() -> None:
    points = random_points(7, seed=13)
    data = points_to_bytes(points)
    assert len(data) == 7 * 32
    assert np.array_equal(points_from_bytes(data), points)
    assert points_from_bytes(b"").shape == (0, 32)
    with pytest.raises(DataError, match="from party 'bank' has 33 bytes"):
        points_from_bytes(b"\x00" * 33, party="bank")
    with pytest.raises(DataError, match="must be bytes"):
        points_from_bytes("text")  # type: ignore[arg-type]

    positions = np.array([5, 0, 2**40], dtype=np.int64)
    encoded = positions_to_bytes(positions)
    assert encoded == positions.astype("<i8").tobytes()
    assert positions_from_bytes(encoded).tolist() == positions.tolist()
    with pytest.raises(DataError, match="7 bytes, not a multiple of 8"):
        positions_from_bytes(b"\x00" * 7)
    with pytest.raises(DataError, match="negative"):
        positions_from_bytes(np.array([-1], dtype="<i8").tobytes())
    with pytest.raises(DataError, match="1-D integer"):
        positions_to_bytes(np.array([[1, 2]]))
