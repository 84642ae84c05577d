"""Benchmark: what a passive party and the label owner can learn, by running the attacks.

Every attack runs against the real protocol (the built-in apps, in-process, on Flower's own
message path, 2048-bit keys) on public data, and prints one JSON line. Each AUC is measured on
the joint customers against the true labels, beside ``random_auc`` (a random score on the
same rows: the noise level of one such measurement).

Passive party (honest but curious: it analyses everything it receives)
    ``passive_ciphertext_parity_auc``, ``passive_ciphertext_magnitude_auc``: each row scored
    by a statistic of the residual ciphertext it received for that row (the parity; the leading
    bits), one score per iteration, the AUC averaged over iterations (``random_auc_std`` is the
    spread of such a mean for random scores). A scheme leaking through its ciphertexts (a
    trivial encryption of zero, a reused obfuscator, a deterministic encoding) shows here.
    ``passive_category_rate_auc``: per level of each of its categorical columns, the mean of
    that statistic, as an estimated label rate per category (the red team's per-category
    attack), each row scored by its levels' estimates.
    ``passive_membership_auc``: joint versus non-joint rows, scored from the slot map and the
    ciphertexts: hidden membership means 0.5.
Passive party (deviating)
    ``chosen_ciphertext_labels_recovered``: it returns the label owner's encrypted residuals in
    place of its masked vectors, once with an inflated count and once with the count the step
    carries, and counts the labels it can read from what comes back.
    ``guessed_ids_revealed``: it submits 5,000 guessed ids beside its 100 real customers and
    counts the joint customers its transcript identifies.
Label owner
    ``label_owner_forward_image_r2``: from the summed images it decrypts at each iteration and
    rows whose passive features it knows (20 more than the span of its images has dimensions),
    it reconstructs the passive party's numeric columns (projection on that span, least
    squares on the known rows): the median R^2 of the columns on the other rows. This one is
    inherent (the label owner computes the exact loss on the summed image), and the README
    says so.

Gradient-boosted trees (``tree_*``, see ``benchmarks/leakage_trees.py``)
    The passive party's ciphertext and membership statistics against their nulls; how well
    its chosen splits separate the labels (the documented leakage: which of its bins were
    chosen); the label owner's view of non-joint customers' sides (chance), and its bin
    recovery from the histograms of small nodes, per ``min-node-rows``.

Usage::

    python benchmarks/label_leakage.py [--quick]

``--quick`` skips the Caravan run. The last line printed is the JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vfm_flower import private_gradients as pg  # noqa: E402
from vfm_flower import private_gradients_label_owner as pg_lo  # noqa: E402
from vfm_flower.agreement import SignedAgreement, init_agreement  # noqa: E402
from vfm_flower.demo_data import prepare_demo_collaboration  # noqa: E402
from vfm_flower.errors import VfmError  # noqa: E402
from vfm_flower.keys import PartyIdentity  # noqa: E402
from vfm_flower.normalize import normalize_ids  # noqa: E402
from vfm_flower.runtime.local_job import PartyFiles, run_local_job  # noqa: E402
from vfm_flower.steps import (  # noqa: E402
    alignment,  # noqa: E402
    evaluation,
    training,
)


# --------------------------------------------------------------------------- recording
class Transcript:
    """What each party received or decrypted during one run (recorded in-process)."""

    def __init__(self) -> None:
        self.residuals: dict[str, list[tuple]] = {}
        self.replies: dict[str, list[object]] = {}
        self.layouts: dict[str, object] = {}
        self.positions_opened: dict[str, int] = {}
        self.images: list[np.ndarray] = []
        self.lo_layout: object = None
        self.public_n: int = 0


@contextlib.contextmanager
def recording(transcript: Transcript, attack=None) -> Iterator[None]:
    """Wrap the protocol's receive/open functions to record; ``attack`` may rewrite the
    attacking party's outgoing forward message."""
    real_receive = training.receive_backward
    real_open = pg_lo.open_forward
    real_iteration = pg.passive_iteration
    real_finish = alignment.finish_alignment
    current: dict[str, object] = {}

    def receive_backward(ctx, topic, round):
        message = real_receive(ctx, topic, round)
        transcript.residuals.setdefault(ctx.party, []).append(message.residuals)
        transcript.replies.setdefault(ctx.party, []).append(message)
        transcript.layouts[ctx.party] = ctx.passive_layout()
        transcript.public_n = int(training.public_key(ctx).n)
        current["party"], current["message"] = ctx.party, message
        return message

    def open_forward(private, messages, layout, features, masks):
        opened = real_open(private, messages, layout, features, masks)
        transcript.images.append(opened.image.copy())
        transcript.lo_layout = layout
        return opened

    def passive_iteration(public, *args, **kwargs):
        out = real_iteration(public, *args, **kwargs)
        if attack is not None:
            out = attack(current["party"], current["message"], public, out)
        return out

    def finish_alignment(runtime, request):
        rows = real_finish(runtime, request)
        if not runtime.is_label_owner:  # a kind that reveals membership: positions arrive
            transcript.positions_opened[runtime.party] = int(len(rows))
        return rows

    training.receive_backward = evaluation.receive_backward = receive_backward
    pg_lo.open_forward = open_forward
    pg.passive_iteration = passive_iteration
    alignment.finish_alignment = finish_alignment
    try:
        yield
    finally:
        training.receive_backward = evaluation.receive_backward = real_receive
        pg_lo.open_forward = real_open
        pg.passive_iteration = real_iteration
        alignment.finish_alignment = real_finish


# --------------------------------------------------------------------------- collaborations
def write_collaboration(root: Path, frames: dict[str, pd.DataFrame], label_owner: str, **terms):
    root.mkdir(parents=True, exist_ok=True)
    identities = {p: PartyIdentity.generate(p) for p in frames}
    files = {}
    for party, frame in frames.items():
        folder = root / "parties" / party
        key, _ = identities[party].save(folder)
        data = folder / f"{party}.csv"
        frame.to_csv(data, index=False)
        files[party] = PartyFiles(data, key)
    operator = PartyIdentity.generate("operator")
    operator.save(root / "operator")
    agreement = init_agreement(
        purpose="label leakage benchmark",
        label_owner=label_owner,
        label_column="y",
        id_column="email",
        id_kind="email",
        parties={p: i.public for p, i in identities.items()},
        operator=operator.public,
        positive_class="1",
        **terms,
    )
    signed = SignedAgreement(agreement, {})
    for identity in (*identities.values(), operator):
        signed = signed.with_signature(identity)
    path = root / "agreement.toml"
    signed.save(path)
    return path, files


def breast_cancer_frames(extra_passive: int = 120, rng=None):
    """Breast cancer split in two: the label owner 10 columns and the label, the passive party
    the other 20 columns and three of them banded into five categories (plus customers the
    label owner does not have)."""
    rng = rng or np.random.default_rng(0)
    data = load_breast_cancer()
    X, y = data.data, data.target
    ids = [f"patient{i:04d}@clinic.example" for i in range(len(y))]
    lo = pd.DataFrame(X[:, :10], columns=[f"a{i}" for i in range(10)])
    lo.insert(0, "email", ids)
    lo["y"] = y
    extra = [f"other{i:04d}@clinic.example" for i in range(extra_passive)]
    passive_values = np.vstack([X[:, 10:], X[rng.integers(0, len(y), extra_passive), 10:]])
    passive = pd.DataFrame(passive_values, columns=[f"b{i}" for i in range(20)])
    for column in ("b0", "b3", "b7"):  # three banded (categorical) columns, for that attack
        passive[f"{column}_band"] = pd.qcut(passive[column], 5, labels=list("ABCDE")).astype(str)
    passive.insert(0, "email", ids + extra)
    return {"lo": lo, "p1": passive.sample(frac=1.0, random_state=1).reset_index(drop=True)}


# --------------------------------------------------------------------------- attacks
def _truth(frames, passive, label_owner, label_column, positive):
    """Ground truth the benchmark knows: per passive row, joint or not, and its label."""
    lo = frames[label_owner]
    lo_ids = normalize_ids([lo["email"].astype(str).tolist()], "email")
    labels = dict(zip(lo_ids, (lo[label_column].astype(str) == positive).astype(int)))
    others = [
        set(normalize_ids([f["email"].astype(str).tolist()], "email"))
        for p, f in frames.items()
        if p not in (label_owner, passive)
    ]
    ids = normalize_ids([frames[passive]["email"].astype(str).tolist()], "email")
    joint = np.array([i in labels and all(i in o for o in others) for i in ids])
    y = np.array([labels.get(i, -1) for i in ids])
    return joint, y


def _auc(y, score) -> float:
    return float(roc_auc_score(y, score))


def ciphertext_statistics(transcript: Transcript, party: str) -> tuple[np.ndarray, np.ndarray]:
    """Per iteration and own row: the parity and the leading 16 bits of the residual
    ciphertext received for that row (``iterations x rows``)."""
    slots = transcript.layouts[party].slot_of_row
    top = 2 * transcript.public_n.bit_length() - 16
    parity, lead = [], []
    for residuals in transcript.residuals[party]:
        if residuals:
            parity.append([int(residuals[s]) & 1 for s in slots])
            lead.append([int(residuals[s]) >> top for s in slots])
    return np.array(parity, dtype=np.float64), np.array(lead, dtype=np.float64)


def passive_attacks(transcript, frames, passive, label_owner, label_column, positive, rng):
    """Each attack scores the rows once per iteration from what that iteration brought; the
    reported AUC is the mean over iterations (a leak shows as a consistent deviation from 0.5;
    an attacker cannot pick the sign of a noise draw without the labels)."""
    joint, y = _truth(frames, passive, label_owner, label_column, positive)
    parity, lead = ciphertext_statistics(transcript, passive)
    rows = joint & (y >= 0)
    table = frames[passive]
    columns = [c for c in table.columns if c != "email" and table[c].nunique() <= 20]

    def category_score(statistic: np.ndarray) -> np.ndarray:
        score = np.zeros(len(table))
        for column in columns:
            means = pd.Series(statistic).groupby(table[column].to_numpy()).transform("mean")
            score += means.to_numpy()
        return score

    def mean_auc(scores) -> float:
        return float(np.mean([_auc(y[rows], s[rows]) for s in scores]))

    out = {
        "parity": mean_auc(parity),
        "magnitude": mean_auc(lead),
        "category": mean_auc([category_score(p) for p in parity]) if columns else 0.5,
        "random": mean_auc(rng.random(parity.shape)),
    }
    # the spread of one such mean when nothing leaks (random scores, as many iterations)
    out["random_std"] = float(np.std([mean_auc(rng.random(parity.shape)) for _ in range(20)]))
    null = (
        [mean_auc([category_score(rng.permutation(p)) for p in parity]) for _ in range(10)]
        if columns
        else [0.5]
    )
    out["category_null_p95"] = float(np.percentile(null, 95))
    if (~joint).any():
        slot_score = transcript.layouts[passive].slot_of_row.astype(float)
        membership = [_auc(joint.astype(int), slot_score)]
        membership += [_auc(joint.astype(int), p) for p in parity]
        out["membership"] = float(np.mean(membership))
    return out


def image_r2(images: np.ndarray, target: np.ndarray, rng, margin: int = 20) -> tuple[float, int]:
    """Median R^2 over target columns, reconstructed from the span of the images with
    ``rank + 1 + margin`` known rows; returns (R^2, rows used)."""
    n, m = target.shape
    u, sv, _ = np.linalg.svd(images - images.mean(axis=0), full_matrices=False)
    rank = int((sv > sv[0] * 1e-9).sum())
    basis = np.hstack([u[:, :rank], np.ones((n, 1))])
    known = rank + 1 + margin
    idx = rng.permutation(n)
    train, test = idx[:known], idx[known:]
    coef, *_ = np.linalg.lstsq(basis[train], target[train], rcond=None)
    pred = basis[test] @ coef
    r2 = []
    for j in range(m):
        truth = target[test, j]
        var = float(np.var(truth))
        if var > 0:
            r2.append(1.0 - float(np.mean((truth - pred[:, j]) ** 2)) / var)
    return float(np.median(r2)), known


# --------------------------------------------------------------------------- runs
def run(agreement, files, workdir, transcript, attack=None, **config):
    """Train; the operator's key is ``operator/operator.key`` beside the agreement."""
    operator_key = Path(agreement).parent / "operator" / "operator.key"
    with recording(transcript, attack):
        try:
            return run_local_job(
                agreement, files, workdir, {"job": "train", **config}, operator_key=operator_key
            ), None
        except VfmError as exc:
            return None, str(exc)


def per_row_plaintexts(message) -> int:
    """Plaintext values in a reply that could carry a decrypted value: everything but the
    ciphertexts (checked to be ciphertexts: in (0, n**2)) and the three control scalars."""
    plain = 0
    for value in (*message.residuals, *message.state):
        if not hasattr(value, "bit_length"):
            plain += 1
    return plain + max(len(message.control.to_dict()) - 3, 0)


def chosen_ciphertext_attack(inflate: bool):
    """The deviating passive party's forward message carries the LO's encrypted residuals in
    place of its masked vectors (all of them, or as many as the step carries)."""

    def attack(party, message, public, out):
        forward, secrets, x = out
        residuals = [c for c in message.residuals if c != 1] or list(message.residuals)
        count = len(residuals) if inflate else len(forward.vectors)
        vectors = tuple((residuals * (count // max(len(residuals), 1) + 1))[:count])
        return pg.ForwardMessage(forward.image, vectors, forward.corrections), secrets, x

    return attack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="breast cancer only")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(2026)  # attack randomness (benchmark only, never crypto)
    result: dict[str, object] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # 1. breast cancer: one passive party (the strongest case for the LO's image attack)
        frames = breast_cancer_frames(rng=rng)
        agreement, files = write_collaboration(root / "bc", frames, "lo", min_intersection=100)
        transcript = Transcript()
        done, error = run(agreement, files, root / "bc" / "work", transcript)
        if error:
            raise SystemExit(f"breast cancer run failed: {error}")
        print(
            f"breast cancer: hold-out AUC {done['public'].get('auc')}, "
            f"{done['public'].get('iterations')} iterations"
        )
        attacks = passive_attacks(transcript, frames, "p1", "lo", "y", "1", rng)
        for key in ("parity", "magnitude", "category"):
            result[
                f"passive_ciphertext_{key}_auc"
                if key != "category"
                else "passive_category_rate_auc"
            ] = round(attacks[key], 3)
        result["passive_category_null_p95"] = round(attacks["category_null_p95"], 3)
        result["passive_membership_auc"] = round(attacks.get("membership", 0.5), 3)
        result["random_auc"] = round(attacks["random"], 3)
        result["random_auc_std"] = round(attacks["random_std"], 3)
        # the LO's image attack: its images are in the joint order; the benchmark maps that
        # order to the passive party's rows (the LO's positions, the party's permutation)
        positions = transcript.lo_layout.positions["p1"]
        rows = transcript.layouts["p1"].row_of_position[positions]
        numeric = frames["p1"].drop(columns=["email"]).select_dtypes("number")
        target = numeric.to_numpy(dtype=float)[rows]
        images = np.column_stack(transcript.images)
        r2, known = image_r2(images, target, rng)
        result["label_owner_forward_image_r2"] = round(r2, 4)
        result["label_owner_forward_image_known_rows"] = known
        result["label_owner_forward_image_iterations"] = images.shape[1]

        # 2. chosen ciphertexts, inflated count and exact count
        recovered = 0
        outcomes = []
        for inflate in (True, False):
            transcript = Transcript()
            agreement, files = write_collaboration(
                root / f"cc{int(inflate)}", frames, "lo", min_intersection=100
            )
            done, error = run(
                agreement,
                files,
                root / f"cc{int(inflate)}" / "work",
                transcript,
                attack=chosen_ciphertext_attack(inflate),
                **{"max-iterations": 5},
            )
            outcomes.append(error or "completed (replies were ciphertexts)")
            # what came back to the attacker: a label can be read only from a plaintext value
            # per row; count those in every reply (the old protocol returned one per feature)
            recovered += sum(per_row_plaintexts(m) for m in transcript.replies.get("p1", []))
        result["chosen_ciphertext_labels_recovered"] = recovered
        result["chosen_ciphertext_outcomes"] = outcomes

        # 3. guessed ids: 100 real customers and 5,000 guesses (900 of them right)
        guess_frames = guessed_id_frames(frames, rng)
        agreement, files = write_collaboration(
            root / "guess", guess_frames, "lo", min_intersection=100
        )
        transcript = Transcript()
        done, error = run(
            agreement, files, root / "guess" / "work", transcript, **{"max-iterations": 3}
        )
        result["guessed_ids_revealed"] = int(transcript.positions_opened.get("p1", 0))
        attacks = passive_attacks(transcript, guess_frames, "p1", "lo", "y", "1", rng)
        result["guessed_ids_membership_auc"] = round(attacks.get("membership", 0.5), 3)

        if not args.quick:
            demo = prepare_demo_collaboration(root / "caravan")
            frames = {p: pd.read_csv(path) for p, path in demo.party_data.items()}
            files = {p: PartyFiles(demo.party_data[p], demo.party_keys[p]) for p in frames}
            transcript = Transcript()
            done, error = run(demo.agreement_path, files, root / "caravan" / "work", transcript)
            if error:
                raise SystemExit(f"caravan run failed: {error}")
            print(f"caravan: hold-out AUC {done['public'].get('auc')}")
            for party in ("broker", "bank"):
                attacks = passive_attacks(
                    transcript, frames, party, "insurer", "Purchase", "Yes", rng
                )
                result[f"caravan_{party}_ciphertext_parity_auc"] = round(attacks["parity"], 3)
                result[f"caravan_{party}_category_rate_auc"] = round(attacks["category"], 3)
                result[f"caravan_{party}_category_null_p95"] = round(
                    attacks["category_null_p95"], 3
                )
                result[f"caravan_{party}_membership_auc"] = round(attacks.get("membership", 0.5), 3)
            result["caravan_random_auc"] = round(attacks["random"], 3)
    passive = [
        v
        for k, v in result.items()
        if k.endswith("_auc") and "membership" not in k and "random" not in k
    ]
    result["max_passive_auc"] = max(passive)
    # an attack passes if it stays at or below 0.55, or within the 95% band of its own null
    bars = {
        k: max(0.55, float(result.get(k.replace("_rate_auc", "_null_p95"), 0.55)))
        for k in result
        if k.endswith("_auc") and "membership" not in k and "random" not in k
    }
    result["attacks_within_bar"] = all(result[k] <= bar for k, bar in bars.items())
    # 4. gradient-boosted trees (benchmarks/leakage_trees.py says what each attack does)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from leakage_trees import tree_attacks

    result.update(tree_attacks(rng))
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    ok = (
        result["attacks_within_bar"]
        and result["tree_attacks_within_bar"]
        and result["chosen_ciphertext_labels_recovered"] == 0
        and result["guessed_ids_revealed"] == 0
    )
    return 0 if ok else 1


def guessed_id_frames(frames, rng):
    lo = frames["lo"]
    ids = lo["email"].tolist()
    real = rng.choice(len(ids), size=100, replace=False)
    right = rng.choice(np.setdiff1d(np.arange(len(ids)), real), size=300, replace=False)
    wrong = [f"guess{i:05d}@clinic.example" for i in range(5000 - len(right))]
    passive_ids = [ids[i] for i in real] + [ids[i] for i in right] + wrong
    values = rng.normal(size=(len(passive_ids), 3))
    passive = pd.DataFrame(values, columns=["g0", "g1", "g2"])
    passive.insert(0, "email", passive_ids)
    # the label owner holds only the attacker's real customers and the right guesses' owners:
    # here all of its customers, so every right guess is joint
    return {"lo": lo, "p1": passive.sample(frac=1.0, random_state=3).reset_index(drop=True)}


if __name__ == "__main__":
    sys.exit(main())
