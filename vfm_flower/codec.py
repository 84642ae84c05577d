"""Payload codec for what travels inside envelopes: named numpy arrays and small metadata.

Uses numpy's ``.npz`` container with ``allow_pickle=False`` on load, so a payload can never
execute code; metadata is JSON. Big integers (Paillier) are packed to fixed-width bytes by
``vfm_flower.paillier`` before they get here.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from vfm_flower.errors import EnvelopeError

_META = "__meta__"
_MAX_MEMBERS = 4096


def pack_payload(
    arrays: Mapping[str, np.ndarray | bytes], meta: Mapping[str, Any] | None = None
) -> bytes:
    """Serialize arrays (``bytes`` values become uint8 arrays) and JSON metadata."""
    buffer = io.BytesIO()
    items = {
        k: np.frombuffer(v, np.uint8) if isinstance(v, bytes) else np.ascontiguousarray(v)
        for k, v in arrays.items()
    }
    if meta is not None:
        items[_META] = np.frombuffer(json.dumps(dict(meta), sort_keys=True).encode(), np.uint8)
    np.savez(buffer, **items)
    return buffer.getvalue()


def _check_archive(blob: bytes) -> None:
    """Refuse a compressed or oversized archive before numpy inflates anything.

    ``pack_payload`` stores its members uncompressed, so a member that claims compression, or
    members that add up to more than the payload itself, can only be a decompression bomb.
    """
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        members = archive.infolist()
        if len(members) > _MAX_MEMBERS:
            raise EnvelopeError(f"payload has more than {_MAX_MEMBERS} arrays")
        total = 0
        for info in members:
            if info.compress_type != zipfile.ZIP_STORED:
                raise EnvelopeError("payload members must be stored, not compressed")
            total += info.file_size
        if total > len(blob):
            raise EnvelopeError("payload declares more bytes than it carries")


def unpack_payload(blob: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of ``pack_payload``; refuses anything that is not such a payload (including
    compressed or oversized archives: the decompressed size is bounded by the payload's)."""
    try:
        _check_archive(blob)
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta_raw = arrays.pop(_META, None)
        meta = json.loads(meta_raw.tobytes().decode()) if meta_raw is not None else {}
    except EnvelopeError:
        raise
    except (
        ValueError,
        OSError,
        zipfile.BadZipFile,
        EOFError,
        UnicodeDecodeError,
        RecursionError,
        NotImplementedError,
    ) as exc:
        raise EnvelopeError("payload is not a valid vfm payload") from exc
    if not isinstance(meta, dict):
        raise EnvelopeError("payload metadata is not a JSON object")
    return arrays, meta
