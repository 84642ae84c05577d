"""Each party's own slice of the model, in its own work dir.

Nobody holds the whole model: a party stores only its weights, its feature names and the
preparation statistics of its own columns (the label owner also the intercept and the model
kind). A passive party's weights are ciphertexts under the label owner's Paillier key
(``encrypted_weights``, with that public key): scoring uses their encrypted image, and only an
agreement that releases them lets the party store them in plain.
A slice is written to a staging directory and moved into place in one rename when
training finished, so an aborted run never leaves a half-written slice that scoring would use.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vfm_flower.errors import DataError

SLICE_DIR = "model"


@dataclass(frozen=True)
class ModelSlice:
    """One party's part of a trained vertical model."""

    party: str
    model: str
    agreement_hash: str
    feature_names: tuple[str, ...]
    weights: np.ndarray
    intercept: float | None
    preparation_json: str
    info: dict[str, Any]
    encrypted_weights: bytes | None = None
    public_key: bytes | None = None
    private_key: bytes | None = None


def save_model_slice(work_dir: Path, model_slice: ModelSlice) -> Path:
    """Write the slice atomically to ``work_dir/model`` (replacing an older one)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    staging = work_dir / f".{SLICE_DIR}.partial-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        meta = {
            "party": model_slice.party,
            "model": model_slice.model,
            "agreement_hash": model_slice.agreement_hash,
            "feature_names": list(model_slice.feature_names),
            "weights": [float(w) for w in model_slice.weights],
            "intercept": model_slice.intercept,
            "info": model_slice.info,
        }
        (staging / "slice.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        (staging / "preparation.json").write_text(model_slice.preparation_json, encoding="utf-8")
        if model_slice.encrypted_weights is not None:
            (staging / "weights.enc").write_bytes(model_slice.encrypted_weights)
        if model_slice.public_key is not None:
            (staging / "paillier_public.key").write_bytes(model_slice.public_key)
        if model_slice.private_key is not None:
            # the label owner's key for scoring with the passive parties' encrypted weights
            key_path = staging / "paillier_private.key"
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(model_slice.private_key)
        target = work_dir / SLICE_DIR
        old = None
        if target.exists():
            old = work_dir / f".{SLICE_DIR}.old-{secrets.token_hex(4)}"
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_model_slice(work_dir: Path, party: str) -> ModelSlice:
    """Read this party's slice; a missing or foreign slice is a clear error."""
    folder = work_dir / SLICE_DIR
    try:
        meta = json.loads((folder / "slice.json").read_text(encoding="utf-8"))
        preparation = (folder / "preparation.json").read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(
            f"party '{party}' has no trained model slice in {folder}: run training first "
            "(its slice is written only when a training run completes)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"party '{party}': model slice in {folder} is unreadable: {exc}") from exc
    if meta.get("party") != party:
        raise DataError(f"the model slice in {folder} belongs to '{meta.get('party')}'")
    encrypted = public = private = None
    if (folder / "weights.enc").is_file():
        encrypted = (folder / "weights.enc").read_bytes()
    if (folder / "paillier_public.key").is_file():
        public = (folder / "paillier_public.key").read_bytes()
    if (folder / "paillier_private.key").is_file():
        private = (folder / "paillier_private.key").read_bytes()
    return ModelSlice(
        party=party,
        model=str(meta["model"]),
        agreement_hash=str(meta["agreement_hash"]),
        feature_names=tuple(meta["feature_names"]),
        weights=np.asarray(meta["weights"], dtype=np.float64),
        intercept=meta.get("intercept"),
        preparation_json=preparation,
        info=dict(meta.get("info", {})),
        encrypted_weights=encrypted,
        public_key=public,
        private_key=private,
    )
