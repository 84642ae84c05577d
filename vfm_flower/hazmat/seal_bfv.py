"""SEAL's BFV scheme through TenSEAL's ``sealapi`` bindings: the lattice backend's plumbing.

Hazardous material: these functions assume their arguments were checked by
:class:`vfm_flower.lattice.LatticeContext`, which is the API to use. They wrap Microsoft SEAL
4.1 (BFV, batching) as TenSEAL 0.3.18 ships it (``tenseal.sealapi``: the one SEAL binding with
wheels for CPython 3.11 on Debian 12); TenSEAL is imported only when a lattice context is made,
so the rest of the package works without the ``lattice`` extra.

What the wrappers add to SEAL: serialization to and from ``bytes`` (SEAL's bindings write
only to a path: an anonymous in-memory file, ``memfd``, where the platform has one, a private
temporary directory otherwise), a check of SEAL's serialization header before SEAL parses
untrusted bytes (size and compression declared up front, so a payload cannot make SEAL
allocate more than the caller allows), NTT-form plaintext products, and the sum of all slots
by rotations.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vfm_flower.errors import CiphertextError, ConfigurationError

#: SEAL's serialization header: magic 0xA15E, header size, version, compression, size.
_SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")


def sealapi() -> Any:
    """TenSEAL's SEAL bindings, or a one-line error naming the extra to install."""
    try:
        import tenseal.sealapi as seal  # noqa: PLC0415 (optional extra, imported on use)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            "the lattice backend needs TenSEAL's SEAL bindings: pip install 'vfm-flower[lattice]'"
        ) from exc
    return seal


@contextlib.contextmanager
def _scratch_path() -> Iterator[str]:
    """A path SEAL can write to and read from that never reaches a disk where possible."""
    fd = -1
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        try:
            fd = os.memfd_create("vfm-seal", os.MFD_CLOEXEC)
        except OSError:
            fd = -1
    if fd >= 0:
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="vfm-seal-") as tmp:  # mode 0700
        yield os.path.join(tmp, "object")


def to_bytes(obj: Any) -> bytes:
    """SEAL's serialization of a ciphertext, key or ``Serializable`` as bytes."""
    with _scratch_path() as path:
        obj.save(path)
        with open(path, "rb") as fh:
            return fh.read()


def check_seal_header(data: bytes, *, max_bytes: int, what: str) -> None:
    """Refuse bytes that are not one SEAL object of at most ``max_bytes`` (before parsing).

    Raises
    ------
    CiphertextError
        ``"header"`` for a missing or foreign header or a size that differs from the
        bytes'; ``"length"`` above ``max_bytes``.
    """
    if len(data) > max_bytes:
        raise CiphertextError("length", f"{what}: {len(data)} bytes, at most {max_bytes} allowed")
    if len(data) < _SEAL_HEADER.size:
        raise CiphertextError("header", f"{what}: {len(data)} bytes is no SEAL object")
    magic, header_size, _major, _minor, compression, _reserved, size = _SEAL_HEADER.unpack_from(
        data
    )
    if magic != _SEAL_MAGIC or header_size != _SEAL_HEADER.size:
        raise CiphertextError("header", f"{what}: not a SEAL object")
    if size != len(data) or compression > 2:
        raise CiphertextError("header", f"{what}: its header does not match its bytes")


def load(obj: Any, context: Any, data: bytes, *, max_bytes: int, what: str) -> Any:
    """Load ``data`` into the empty SEAL object ``obj`` for ``context`` (SEAL checks it is
    valid for the parameters); return ``obj``.

    Raises
    ------
    CiphertextError
        A bad header (:func:`check_seal_header`), or bytes SEAL refuses.
    """
    check_seal_header(data, max_bytes=max_bytes, what=what)
    with _scratch_path() as path:
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            obj.load(context, path)
        except (RuntimeError, ValueError) as exc:
            raise CiphertextError("header", f"{what}: SEAL refused it ({exc})") from None
    return obj


@dataclass(frozen=True)
class BFVKit:
    """Everything one plaintext modulus needs: SEAL context, keys and tools.

    ``decryptor`` and ``secret_key`` are ``None`` at a party without the private key.
    """

    context: Any
    plain_modulus: int
    public_key: Any
    galois_keys: Any
    secret_key: Any | None
    encryptor: Any
    evaluator: Any
    encoder: Any
    decryptor: Any | None

    @property
    def slots(self) -> int:
        return int(self.encoder.slot_count())


def primes(poly_degree: int, bit_sizes: Sequence[int]) -> list[int]:
    """Distinct NTT-friendly primes (``= 1 mod 2N``) of the given sizes, as SEAL makes them."""
    seal = sealapi()
    return [int(m.value()) for m in seal.CoeffModulus.Create(poly_degree, list(bit_sizes))]


def max_coeff_bits(poly_degree: int) -> int:
    """The HE standard's largest ciphertext modulus for 128-bit classical security."""
    seal = sealapi()
    return int(seal.CoeffModulus.MaxBitCount(poly_degree, seal.SEC_LEVEL_TYPE.TC128))


def make_context(poly_degree: int, coeff_primes: Sequence[int], plain_modulus: int) -> Any:
    """A SEAL BFV context at 128-bit security, or :class:`ConfigurationError` naming SEAL's
    reason for refusing the parameters."""
    seal = sealapi()
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(poly_degree)
    parms.set_coeff_modulus([seal.Modulus(p) for p in coeff_primes])
    parms.set_plain_modulus(seal.Modulus(plain_modulus))
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise ConfigurationError(
            f"SEAL refused the lattice parameters: {context.parameters_error_message()}"
        )
    return context


def rotation_steps(poly_degree: int) -> list[int]:
    """The rotations that sum all slots: every power of two in a row, then the row swap."""
    return [1 << k for k in range((poly_degree // 2).bit_length() - 1)] + [0]


def new_kit(context: Any, plain_modulus: int) -> tuple[BFVKit, bytes, bytes, bytes]:
    """Fresh keys for one modulus: the kit and the bytes of its public, Galois and secret
    keys (Galois keys in SEAL's seeded form, half the size)."""
    seal = sealapi()
    keygen = seal.KeyGenerator(context)
    public = seal.PublicKey()
    keygen.create_public_key(public)
    steps = rotation_steps(context.key_context_data().parms().poly_modulus_degree())
    elements = context.key_context_data().galois_tool().get_elts_from_steps(steps)
    galois_bytes = to_bytes(keygen.create_galois_keys(elements))
    galois = seal.GaloisKeys()
    load(galois, context, galois_bytes, max_bytes=len(galois_bytes), what="Galois keys")
    secret = keygen.secret_key()
    kit = kit_from_keys(context, plain_modulus, public, galois, secret)
    return kit, to_bytes(public), galois_bytes, to_bytes(secret)


def kit_from_keys(
    context: Any, plain_modulus: int, public: Any, galois: Any, secret: Any | None
) -> BFVKit:
    seal = sealapi()
    return BFVKit(
        context=context,
        plain_modulus=plain_modulus,
        public_key=public,
        galois_keys=galois,
        secret_key=secret,
        encryptor=seal.Encryptor(context, public),
        evaluator=seal.Evaluator(context),
        encoder=seal.BatchEncoder(context),
        decryptor=None if secret is None else seal.Decryptor(context, secret),
    )


def load_kit(
    context: Any,
    plain_modulus: int,
    public_bytes: bytes,
    galois_bytes: bytes,
    secret_bytes: bytes | None,
    *,
    max_key_bytes: int,
) -> BFVKit:
    """The kit of one modulus from its key bytes (checked by SEAL against the context)."""
    seal = sealapi()
    public = load(seal.PublicKey(), context, public_bytes, max_bytes=max_key_bytes, what="key")
    galois = load(
        seal.GaloisKeys(), context, galois_bytes, max_bytes=max_key_bytes, what="Galois keys"
    )
    secret = None
    if secret_bytes is not None:
        secret = load(
            seal.SecretKey(), context, secret_bytes, max_bytes=max_key_bytes, what="secret key"
        )
    return kit_from_keys(context, plain_modulus, public, galois, secret)


def encode(kit: BFVKit, residues: np.ndarray) -> Any:
    """A batched plaintext of at most ``slots`` residues in ``[0, t)`` (zero-padded)."""
    seal = sealapi()
    plain = seal.Plaintext()
    kit.encoder.encode(np.asarray(residues, dtype=np.uint64).tolist(), plain)
    return plain


def encode_ntt(kit: BFVKit, residues: np.ndarray, parms_id: Any) -> Any:
    """:func:`encode`, then to NTT form at ``parms_id`` (for products with NTT ciphertexts)."""
    plain = encode(kit, residues)
    kit.evaluator.transform_to_ntt_inplace(plain, parms_id)
    return plain


def encrypt(kit: BFVKit, residues: np.ndarray) -> Any:
    seal = sealapi()
    ct = seal.Ciphertext()
    kit.encryptor.encrypt(encode(kit, residues), ct)
    return ct


def decrypt(kit: BFVKit, ct: Any) -> np.ndarray:
    """The residues in ``[0, t)`` of every slot."""
    seal = sealapi()
    assert kit.decryptor is not None
    plain = seal.Plaintext()
    kit.decryptor.decrypt(ct, plain)
    return np.asarray(kit.encoder.decode_uint64(plain), dtype=np.uint64)


def noise_budget(kit: BFVKit, ct: Any) -> int:
    """SEAL's invariant noise budget in bits (key holder; ``0``: it no longer decrypts)."""
    assert kit.decryptor is not None
    return int(kit.decryptor.invariant_noise_budget(ct))


def to_ntt(kit: BFVKit, ct: Any) -> Any:
    seal = sealapi()
    out = seal.Ciphertext()
    kit.evaluator.transform_to_ntt(ct, out)
    return out


def from_ntt(kit: BFVKit, ct: Any) -> Any:
    kit.evaluator.transform_from_ntt_inplace(ct)
    return ct


def multiply_plain(kit: BFVKit, ct: Any, plain: Any) -> Any:
    seal = sealapi()
    out = seal.Ciphertext()
    kit.evaluator.multiply_plain(ct, plain, out)
    return out


def add_plain(kit: BFVKit, ct: Any, residues: np.ndarray) -> Any:
    seal = sealapi()
    out = seal.Ciphertext()
    kit.evaluator.add_plain(ct, encode(kit, residues), out)
    return out


def sum_of_products(kit: BFVKit, pairs: Sequence[tuple[Any, Any]]) -> Any:
    """``sum_k ct_k * p_k`` slot-wise, for NTT-form ciphertexts and plaintexts (NTT form at
    the ciphertext's level, :func:`encode_ntt`); the result back in coefficient form. Zero
    plaintexts are skipped; if every one is zero the result is a fresh encryption of zero."""
    acc = None
    for ct, plain in pairs:
        if plain.is_zero():  # SEAL refuses a product that is transparent (all zero)
            continue
        product = multiply_plain(kit, ct, plain)
        if acc is None:
            acc = product
        else:
            kit.evaluator.add_inplace(acc, product)
    if acc is None:
        if not pairs:
            raise ValueError("sum_of_products: no terms")
        zero = sealapi().Ciphertext()  # an all-zero column block: a fresh encryption of 0
        kit.encryptor.encrypt_zero(pairs[0][0].parms_id(), zero)
        return zero
    return from_ntt(kit, acc)


def sum_slots(kit: BFVKit, ct: Any) -> Any:
    """The sum of all slots, in every slot: ``log2(N) - 1`` row rotations and one row swap,
    each followed by an addition (in place on ``ct``, returned)."""
    seal = sealapi()
    for step in rotation_steps(kit.slots):
        rotated = seal.Ciphertext()
        if step:
            kit.evaluator.rotate_rows(ct, step, kit.galois_keys, rotated)
        else:
            kit.evaluator.rotate_columns(ct, kit.galois_keys, rotated)
        kit.evaluator.add_inplace(ct, rotated)
    return ct


def sanitize(kit: BFVKit, ct: Any, parms_id: Any) -> Any:
    """``ct`` plus a fresh encryption of zero, switched down to ``parms_id`` (a new ciphertext).

    The fresh encryption makes the ciphertext's ``c1`` pseudorandom to the key holder; the
    modulus switch divides the noise by the dropped primes, so what is left is SEAL's rounding
    (the argument and the margin are in :mod:`vfm_flower.lattice`).
    """
    seal = sealapi()
    zero = seal.Ciphertext()
    kit.encryptor.encrypt_zero(ct.parms_id(), zero)
    out = seal.Ciphertext()
    kit.evaluator.add(ct, zero, out)
    kit.evaluator.mod_switch_to_inplace(out, parms_id)
    return out


def chain(context: Any) -> list[tuple[int, Any]]:
    """``(primes, parms_id)`` of every data level, from the first (all primes) down."""
    out = []
    data = context.first_context_data()
    while data is not None:
        out.append((len(data.parms().coeff_modulus()), data.parms_id()))
        data = data.next_context_data()
    return out


def ciphertext_shape(ct: Any) -> tuple[int, int, Any]:
    """``(polynomials, primes, parms_id)`` of a ciphertext (a well-formed one has 2)."""
    return int(ct.size()), int(ct.coeff_modulus_size()), ct.parms_id()


def new_ciphertext() -> Any:
    return sealapi().Ciphertext()
