"""Audit bundles over the logs of real runs: every tampering shows, naming the log and line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import governed_collab
from vfm_flower.agreement import SignedAgreement
from vfm_flower.audit import AuditLog
from vfm_flower.audit_bundle import export_audit_bundle, verify_audit_bundle
from vfm_flower.cli import main
from vfm_flower.keys import PartyIdentity

FAST = {"max-iterations": 2}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Two training jobs under one agreement, then a pristine copy of the work dir."""
    root = tmp_path_factory.mktemp("bundle")
    collab = governed_collab(root, 61)
    collab.run(job="train", **FAST)
    first_server_log = next((collab.root / "work" / "server").glob("audit-*.jsonl")).read_bytes()
    collab.run(job="train", **FAST)
    return collab, first_server_log


def _work(ran, tmp_path) -> Path:
    collab, _ = ran
    work = tmp_path / "work"
    shutil.copytree(collab.root / "work", work)
    return work


def _log(work: Path, who: str) -> Path:
    folder = work / ("server" if who == "server" else f"parties/{who}")
    return next(folder.glob("audit-*.jsonl"))


def _terms(ran) -> str:
    return SignedAgreement.load(ran[0].agreement_path).terms_hash()


def _verify(ran, work: Path, tmp_path: Path):
    collab, _ = ran
    bundle = export_audit_bundle(collab.agreement_path, [work], tmp_path / "bundle.tar.gz")
    return verify_audit_bundle(bundle, _terms(ran))


def _reasons(result) -> str:
    return " | ".join([*result.problems, *(f"{n}: {r.reason}" for n, r in result.logs if not r.ok)])


def test_an_intact_collaboration_verifies_through_the_cli(ran, tmp_path, capsys):
    collab, _ = ran
    work = _work(ran, tmp_path)
    bundle = tmp_path / "audit.tar.gz"
    args = ["audit", "export", str(work), "--agreement", str(collab.agreement_path)]
    assert main([*args, "--out", str(bundle)]) == 0
    assert main([*args, "--out", str(bundle)]) == 2  # no silent overwrite
    capsys.readouterr()
    assert main(["audit", "verify", str(bundle)]) == 2  # against what? refused
    assert "proves nothing by itself" in capsys.readouterr().err
    assert main(["audit", "verify", str(bundle), "--agreement", str(collab.agreement_path)]) == 0
    out = capsys.readouterr().out
    assert "ok: bundle" in out and "4 logs, every signer's" in out and _terms(ran) in out
    assert main(["audit", "verify", str(bundle), "--expect-hash", "0" * 64]) == 1
    assert "not " + "0" * 64 in capsys.readouterr().err


def test_a_deleted_log_is_named(ran, tmp_path):
    work = _work(ran, tmp_path)
    _log(work, "p1").unlink()
    result = _verify(ran, work, tmp_path)
    assert not result.ok and "no audit log of p1" in _reasons(result)


def test_a_server_log_rebuilt_under_a_fresh_key_is_refused(ran, tmp_path):
    collab, _ = ran
    work = _work(ran, tmp_path)
    path = _log(work, "server")
    path.unlink()
    terms = SignedAgreement.load(collab.agreement_path).terms_hash()
    fake = AuditLog.open(path, PartyIdentity.generate("operator"), terms)
    fake.record("hello", 1, "ok")
    fake.seal()
    result = _verify(ran, work, tmp_path)
    assert not result.ok and "another key than operator's" in _reasons(result)


def test_a_party_log_re_signed_by_its_own_writer_is_caught_by_the_servers_attestation(
    ran, tmp_path
):
    collab, _ = ran
    work = _work(ran, tmp_path)
    path = _log(work, "p2")
    path.unlink()
    terms = SignedAgreement.load(collab.agreement_path).terms_hash()
    rewritten = AuditLog.open(path, collab.identities["p2"], terms)  # its own, genuine key
    rewritten.record("hello", 1, "ok", detail="a history that never happened")
    rewritten.seal()
    result = _verify(ran, work, tmp_path)
    assert not result.ok
    bad = {n: r for n, r in result.logs if not r.ok}
    assert [n for n in bad if "/p2/" in n] and "rolled back or truncated" in _reasons(result)


def test_a_server_log_rolled_back_to_the_previous_seal_is_caught_by_every_party(ran, tmp_path):
    _, first_server_log = ran
    work = _work(ran, tmp_path)
    _log(work, "server").write_bytes(first_server_log)  # the log as it was after job 1
    result = _verify(ran, work, tmp_path)
    bad = [(n, r) for n, r in result.logs if not r.ok]
    assert bad and all("server" not in n or "operator" in n for n, _ in bad)
    assert "operator: line" not in _reasons(result) and "holds its entry" in _reasons(result)
    assert all(r.first_bad_line for _, r in bad)  # the first bad line is named


def test_a_bundle_changed_after_export_is_refused(ran, tmp_path):
    import tarfile

    work = _work(ran, tmp_path)
    bundle = tmp_path / "b.tar.gz"
    collab, _ = ran
    export_audit_bundle(collab.agreement_path, [work], bundle)
    out = tmp_path / "changed.tar.gz"
    with tarfile.open(bundle) as src, tarfile.open(out, "w:gz") as dst:
        for info in src:
            data = src.extractfile(info).read()
            if info.name.startswith("logs/p1/"):
                data = data.replace(b'"decision":"ok"', b'"decision":"ko"', 1)
                info.size = len(data)
            import io

            dst.addfile(info, io.BytesIO(data))
    result = verify_audit_bundle(out, _terms(ran))
    assert not result.ok and "differs from the manifest" in _reasons(result)


def _repack(bundle: Path, out: Path, extra: dict[str, bytes]) -> Path:
    import io
    import tarfile

    with tarfile.open(bundle) as src, tarfile.open(out, "w:gz") as dst:
        for info in src:
            dst.addfile(info, io.BytesIO(src.extractfile(info).read()))
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out


def test_a_bundle_with_members_tar_would_extract_differently_is_refused(ran, tmp_path):
    from vfm_flower.errors import ConfigurationError

    collab, _ = ran
    work = _work(ran, tmp_path)
    bundle = export_audit_bundle(collab.agreement_path, [work], tmp_path / "b.tar.gz")
    log = next(n for n in _names(bundle) if n.startswith("logs/p1/"))
    for i, extra in enumerate(
        ({"./" + log: b"{}"}, {log: b"{}"}, {"logs/x.jsonl": b""}, {"../evil.jsonl": b""})
    ):
        forged = _repack(bundle, tmp_path / f"f{i}.tar.gz", extra)
        with pytest.raises(ConfigurationError, match="refused"):
            verify_audit_bundle(forged, _terms(ran))


def _names(bundle: Path) -> list[str]:
    import tarfile

    with tarfile.open(bundle) as tar:
        return tar.getnames()


def test_a_planted_log_with_a_path_for_a_writer_is_not_exported(ran, tmp_path, monkeypatch):
    import dataclasses

    import vfm_flower.audit_bundle as bundles
    from vfm_flower.errors import ConfigurationError

    collab, _ = ran
    work = _work(ran, tmp_path)
    genuine = bundles.verify_audit_log

    def planted(path):  # a log whose (self-signed) genesis names a path as its writer
        res = genuine(path)
        return dataclasses.replace(res, writer="../../x") if "p1" in str(path) else res

    monkeypatch.setattr(bundles, "verify_audit_log", planted)
    with pytest.raises(ConfigurationError, match="planted"):
        export_audit_bundle(collab.agreement_path, [work], tmp_path / "b.tar.gz")
