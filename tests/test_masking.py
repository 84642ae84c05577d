"""Tests of the pairwise-mask secure sum (vfm_flower.masking)."""

from __future__ import annotations

import numpy as np
import pytest

from vfm_flower import masking
from vfm_flower.keys import PartyIdentity

LO = "insurer"
RUN = "run-42"
AGREEMENT = "sha256:agreement"


def _parties(count: int) -> dict[str, PartyIdentity]:
    names = [LO] + [f"party{k}" for k in range(1, count)]
    return {name: PartyIdentity.generate(name) for name in names}


def _seeds(identities: dict[str, PartyIdentity], run_id: str = RUN) -> dict[str, dict]:
    publics = {name: ident.public for name, ident in identities.items()}
    return {
        name: masking.derive_pairwise_seeds(ident, publics, run_id=run_id, agreement_hash=AGREEMENT)
        for name, ident in identities.items()
    }


def _data(rows: int, seed: int) -> np.ndarray:
    # Test data only: numpy's generator never feeds any mask.
    return np.random.default_rng(seed).normal(scale=3.0, size=rows)


# ---------------------------------------------------------------------------- fixed point


def test_fixed_point_round_trip_to_precision() -> None:
    x = np.array([0.0, 1.0, -1.0, 3.14159265, -2.5e-3, 1e6, -1e6, 2.0**-30])
    back = masking.decode_fixed(masking.encode_fixed(x))
    assert masking.encode_fixed(x).dtype == np.uint64
    assert np.all(np.abs(back - x) <= 2.0 ** -(masking.FRACTION_BITS + 1))


def test_fixed_point_negative_values_are_twos_complement() -> None:
    enc = masking.encode_fixed(np.array([-1.0]))
    assert int(enc[0]) == 2**64 - 2**masking.FRACTION_BITS


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_encode_refuses_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        masking.encode_fixed(np.array([1.0, bad]))


def test_encode_refuses_overflow() -> None:
    with pytest.raises(ValueError, match="out of fixed-point range"):
        masking.encode_fixed(np.array([masking.MAX_ABS_VALUE]))
    masking.encode_fixed(np.array([masking.MAX_ABS_VALUE * 0.999]))  # just below is fine


def test_decode_refuses_other_dtypes() -> None:
    with pytest.raises(ValueError, match="uint64"):
        masking.decode_fixed(np.array([1.0]))


# ---------------------------------------------------------------------------- seeds


def test_both_sides_derive_the_same_seed() -> None:
    ids = _parties(3)
    seeds = _seeds(ids)
    for a in ids:
        assert set(seeds[a]) == set(ids) - {a}
        for b in seeds[a]:
            assert seeds[a][b] == seeds[b][a]
            assert len(seeds[a][b]) == masking.SEED_BYTES
    assert seeds[LO]["party1"] != seeds[LO]["party2"]


def test_seeds_are_bound_to_run_and_agreement() -> None:
    ids = _parties(2)
    publics = {n: i.public for n, i in ids.items()}
    me = ids[LO]
    base = masking.derive_pairwise_seeds(me, publics, run_id=RUN, agreement_hash=AGREEMENT)
    other_run = masking.derive_pairwise_seeds(
        me, publics, run_id="run-43", agreement_hash=AGREEMENT
    )
    other_agreement = masking.derive_pairwise_seeds(me, publics, run_id=RUN, agreement_hash="x")
    assert base["party1"] != other_run["party1"]
    assert base["party1"] != other_agreement["party1"]


def test_seed_derivation_rejects_bad_peer_lists() -> None:
    ids = _parties(2)
    me = ids[LO]
    with pytest.raises(ValueError, match="holds the public identity"):
        masking.derive_pairwise_seeds(
            me, {"party9": ids["party1"].public}, run_id=RUN, agreement_hash=AGREEMENT
        )
    with pytest.raises(ValueError, match="at least one peer"):
        masking.derive_pairwise_seeds(me, {LO: me.public}, run_id=RUN, agreement_hash=AGREEMENT)
    with pytest.raises(ValueError, match="another key"):
        masking.derive_pairwise_seeds(
            me,
            {LO: PartyIdentity.generate(LO).public, "party1": ids["party1"].public},
            run_id=RUN,
            agreement_hash=AGREEMENT,
        )
    with pytest.raises(ValueError, match="run id"):
        masking.derive_pairwise_seeds(
            me, {"party1": ids["party1"].public}, run_id="", agreement_hash=AGREEMENT
        )


# ---------------------------------------------------------------------------- masks


def test_pairwise_mask_is_deterministic_and_label_bound() -> None:
    seed = bytes(range(32))
    a = masking.pairwise_mask(seed, "run/1/forward", 100)
    assert a.dtype == np.uint64 and a.shape == (100,)
    assert np.array_equal(a, masking.pairwise_mask(seed, "run/1/forward", 100))
    assert np.array_equal(a[:10], masking.pairwise_mask(seed, "run/1/forward", 10))
    assert not np.any(a == masking.pairwise_mask(seed, "run/2/forward", 100))
    assert not np.any(a == masking.pairwise_mask(bytes(32), "run/1/forward", 100))


def test_pairwise_mask_validates_inputs() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        masking.pairwise_mask(b"short", "label", 4)
    with pytest.raises(ValueError, match="label"):
        masking.pairwise_mask(bytes(32), "", 4)
    with pytest.raises(ValueError, match="non-negative"):
        masking.pairwise_mask(bytes(32), "label", -1)
    assert masking.pairwise_mask(bytes(32), "label", 0).size == 0


def test_masked_vectors_look_uniform() -> None:
    ids = _parties(3)
    seeds = _seeds(ids)
    rows = 4096
    plain = masking.encode_fixed(np.zeros(rows))  # the most structured input there is
    masked = masking.mask_vector(plain, "party1", seeds["party1"], "run/0/forward")
    assert not np.any(masked == plain)
    bits = np.unpackbits(masked.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.005  # 262,144 bits: 5 sigma is ~0.005
    top_bytes = (masked >> np.uint64(56)).astype(np.int64)
    counts = np.bincount(top_bytes, minlength=256)
    expected = rows / 256
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 400  # 255 degrees of freedom: p ~ 1e-8
    # The same value masked by two parties, or with two labels, gives unrelated vectors.
    other = masking.mask_vector(plain, "party2", seeds["party2"], "run/0/forward")
    later = masking.mask_vector(plain, "party1", seeds["party1"], "run/1/forward")
    assert not np.any(masked == other) and not np.any(masked == later)


@pytest.mark.parametrize("n_parties", [2, 3, 4])
def test_secure_sum_with_label_owner_unmask(n_parties: int) -> None:
    ids = _parties(n_parties)
    seeds = _seeds(ids)
    rows, label = 257, "run/3/forward"
    senders = [name for name in ids if name != LO]
    plain = {name: _data(rows, k) for k, name in enumerate(senders)}
    wire = [
        masking.u64_to_bytes(
            masking.mask_vector(masking.encode_fixed(plain[name]), name, seeds[name], label)
        )
        for name in senders
    ]
    summed = masking.sum_masked([masking.u64_from_bytes(b, rows) for b in wire])
    total = masking.decode_fixed(masking.unmask_sum(summed, LO, seeds[LO], label))
    expected = sum(plain.values())
    assert np.max(np.abs(total - expected)) <= len(senders) * 2.0 ** -(masking.FRACTION_BITS + 1)


def _masked_sum(n_parties: int, label: str) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    ids = _parties(n_parties)
    seeds = _seeds(ids)
    senders = [name for name in ids if name != LO]
    plain = {name: _data(64, k) for k, name in enumerate(senders)}
    summed = masking.sum_masked(
        [masking.mask_vector(masking.encode_fixed(plain[n]), n, seeds[n], label) for n in senders]
    )
    return ids, seeds, summed, sum(plain.values())


def test_wrong_label_or_seed_gives_garbage() -> None:
    _, seeds, summed, expected = _masked_sum(3, "run/5/forward")
    wrong_label = masking.decode_fixed(masking.unmask_sum(summed, LO, seeds[LO], "run/6/forward"))
    assert np.min(np.abs(wrong_label - expected)) > 1.0
    bad_seeds = dict(seeds[LO])
    bad_seeds["party1"] = bytes(32)
    wrong_seed = masking.decode_fixed(masking.unmask_sum(summed, LO, bad_seeds, "run/5/forward"))
    assert np.min(np.abs(wrong_seed - expected)) > 1.0
    right = masking.decode_fixed(masking.unmask_sum(summed, LO, seeds[LO], "run/5/forward"))
    assert np.max(np.abs(right - expected)) < 1e-6


@pytest.mark.parametrize("n_parties", [2, 3])
def test_server_alone_cannot_unmask(n_parties: int) -> None:
    _, _, summed, expected = _masked_sum(n_parties, "run/7/forward")
    # What the server holds (the sum of masked vectors) decodes to noise of magnitude ~2**39.
    seen = masking.decode_fixed(summed)
    assert np.min(np.abs(seen - expected)) > 1.0
    assert np.median(np.abs(seen)) > 2.0**30


def test_mask_vector_validates_inputs() -> None:
    seeds = {"party1": bytes(32)}
    with pytest.raises(ValueError, match="uint64"):
        masking.mask_vector(np.zeros(3), LO, seeds, "l")
    with pytest.raises(ValueError, match="own name"):
        masking.mask_vector(np.zeros(3, dtype=np.uint64), "party1", seeds, "l")
    with pytest.raises(ValueError, match="at least one peer"):
        masking.mask_vector(np.zeros(3, dtype=np.uint64), LO, {}, "l")


def test_sum_masked_validates_inputs() -> None:
    with pytest.raises(ValueError, match="no masked vector"):
        masking.sum_masked([])
    with pytest.raises(ValueError, match="entries, expected"):
        masking.sum_masked([np.zeros(3, dtype=np.uint64), np.zeros(4, dtype=np.uint64)])
    wrap = masking.sum_masked([np.array([2**64 - 1], dtype=np.uint64), np.ones(1, np.uint64)])
    assert int(wrap[0]) == 0


def test_u64_codec_round_trip_and_validation() -> None:
    v = np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)
    data = masking.u64_to_bytes(v)
    assert len(data) == 32
    assert np.array_equal(masking.u64_from_bytes(data), v)
    assert np.array_equal(masking.u64_from_bytes(data, 4), v)
    with pytest.raises(ValueError, match="multiple of 8"):
        masking.u64_from_bytes(data[:-1])
    with pytest.raises(ValueError, match="expected 5"):
        masking.u64_from_bytes(data, 5)
    with pytest.raises(ValueError, match="uint64"):
        masking.u64_to_bytes(np.zeros(2, dtype=np.int64))


def test_a_mask_of_millions_of_rows_never_wraps_the_counter() -> None:
    """The keystream starts at block 0: a 10M-word mask is one unbroken ChaCha20 stream."""
    from vfm_flower.masking import pairwise_mask

    seed = bytes(range(32))
    for label in (f"train/forward/{i}" for i in range(8)):
        long = pairwise_mask(seed, label, 10_000_000)
        short = pairwise_mask(seed, label, 1_000)
        assert long.shape == (10_000_000,) and np.array_equal(long[:1000], short)


def test_the_mask_keystream_starts_at_block_zero() -> None:
    """Counter 0 (not a derived, random start): the 32-bit block counter cannot wrap."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from vfm_flower import masking

    seed, label = bytes(range(32)), "score/forward"
    material = HKDF(
        algorithm=hashes.SHA256(),
        length=44,
        salt=None,
        info=masking._PRG_INFO + masking._length_prefixed(label.encode()),
    ).derive(seed)
    cipher = Cipher(algorithms.ChaCha20(material[:32], bytes(4) + material[32:]), mode=None)
    expected = np.frombuffer(cipher.encryptor().update(bytes(8 * 64)), dtype="<u8")
    assert np.array_equal(masking.pairwise_mask(seed, label, 64), expected)
