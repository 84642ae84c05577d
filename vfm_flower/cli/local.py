"""Local commands: ``vfm demo``, ``vfm local train``, ``vfm local score``.

They run the real ServerApp and one ClientApp per party in this process (the in-process
runner on Flower's own Grid and serialization). Outputs go to a staging directory that
replaces the work dir only when the job succeeded: a failed run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
from pathlib import Path

from vfm_flower.cli.options import name_value_pairs
from vfm_flower.errors import ConfigurationError


def _staging_for(workdir: Path, force: bool) -> Path:
    if workdir.exists() and any(workdir.iterdir()) and not force:
        raise ConfigurationError(
            f"work dir {workdir} exists and is not empty: choose another --workdir or pass --force"
        )
    workdir.parent.mkdir(parents=True, exist_ok=True)
    staging = workdir.parent / f".{workdir.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir()
    return staging


def _commit_staging(staging: Path, workdir: Path) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    os.replace(staging, workdir)


#: The demo's overlap per segment: the data broker's customer main type (10 values).
DEMO_OVERLAP_SEGMENT = {"segment-party": "broker", "segment-column": "MOSHOOFD"}


def cmd_demo(args: argparse.Namespace) -> int:
    from vfm_flower.cli.progress import attach_progress
    from vfm_flower.demo_data import prepare_demo_collaboration
    from vfm_flower.runtime.local_job import PartyFiles, run_local_job

    console = attach_progress(args.quiet)
    workdir = Path(args.workdir).resolve()
    staging = _staging_for(workdir, args.force)
    try:
        console.print(f"[bold]setup[/] keys, party data and a signed agreement in {workdir}")
        demo = prepare_demo_collaboration(staging / "setup")
        if args.prepare_only:
            _commit_staging(staging, workdir)
            console.print(f"prepared demo collaboration in {workdir}")
            return 0
        files = {
            p: PartyFiles(data_path=demo.party_data[p], key_path=demo.party_keys[p])
            for p in demo.party_data
        }
        before = {}  # the clean-room questions first: overlap, then one segment table
        for model, what in (
            ("overlap", "how many customers the companies share (counts only)"),
            ("segments", "purchase rate per customer main type (encrypted)"),
        ):
            console.print(f"[bold]{model}[/] {what}")
            config = {"model": model, **DEMO_OVERLAP_SEGMENT}
            run_local_job(
                demo.agreement_path, files, staging, config, operator_key=demo.operator_key
            )
            report = staging / "parties" / "insurer" / f"{model}.json"
            before[model] = json.loads(report.read_text(encoding="utf-8"))
        overlap, segments = before["overlap"], before["segments"]
        result = run_local_job(
            demo.agreement_path,
            files,
            staging,
            {
                "job": "train",
                "model": "logistic",
                "max-iterations": args.iterations,
                "outcome": "buy",
                "holdout-seed": args.seed,
            },
            operator_key=demo.operator_key,
        )
        console.print("[bold]score[/] scoring the shared customers with the trained slices")
        scored = run_local_job(
            demo.agreement_path,
            files,
            staging,
            {"job": "score", "model": "logistic"},
            operator_key=demo.operator_key,
        )
        result["public"]["scored_rows"] = scored["public"].get("scored_rows")
        # result.json stays the training job's result (result-score.json holds the scoring's)
        server_dir = staging / "server"
        shutil.copyfile(server_dir / "result-train.json", server_dir / "result.json")
        _commit_staging(staging, workdir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    from rich.table import Table

    from vfm_flower.cli.clean_room import print_overlap, print_segments

    print_overlap(console, overlap, Table)
    console.print(f"[bold]overlap report[/] {workdir / 'parties' / 'insurer' / 'overlap.html'}")
    print_segments(console, segments, Table)
    console.print(f"[bold]segments[/] {workdir / 'parties' / 'insurer' / 'segments.html'}")
    public = result["public"]
    console.print(f"[bold]aligned rows[/] {result['joint_rows']:,} customers shared by all parties")
    console.print(
        f"[bold]hold-out AUC[/] federated {public['auc']:.3f} vs insurer's own columns "
        f"{public['auc_label_owner_only']:.3f} ({public['iterations']} iterations, "
        f"{public['rounds_per_iteration']} rounds each)"
    )
    report_dir = workdir / "parties" / "insurer"
    console.print(f"[bold]report[/] {report_dir / 'report.html'} (and report.json)")
    for line in public.get("headline", []):
        console.print(f"  - {line}")
    console.print(
        f"[bold]scores[/] {public['scored_rows']:,} customers scored: "
        f"{workdir / 'parties' / 'insurer' / 'scores.csv'}"
    )
    console.print(f"rounds: {result['total_rounds']} in the training job; results in {workdir}")
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))  # noqa: T201
    return 0


def _pairs(values: list[str] | None, option: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name, path in name_value_pairs(values, option, "PATH"):
        if name in out:
            raise ConfigurationError(f"{option} names party '{name}' twice")
        out[name] = Path(path).expanduser()
    return out


def _key_candidates(name: str, given: dict[str, Path], dirs: list[Path]) -> list[Path]:
    """Where ``name``'s private key may be: the ``--key`` given for it, else ``NAME.key`` in
    each directory, in order."""
    return [given[name]] if name in given else [d / f"{name}.key" for d in dirs]


def _party_files(args: argparse.Namespace) -> tuple[Path, dict, Path | None]:
    """Check --agreement/--data/--key(s) against the agreement; one clear error per problem.

    Returns the agreement path, every party's files and the operator's key (found like a
    party's; ``None`` when the server work dir holds it already).
    """
    from vfm_flower.agreement import SignedAgreement
    from vfm_flower.runtime.local_job import PartyFiles

    agreement_path = Path(args.agreement).expanduser()
    if not agreement_path.is_file():
        raise ConfigurationError(f"--agreement {agreement_path} does not exist")
    agreement = SignedAgreement.load(agreement_path).agreement
    data = _pairs(args.data, "--data")
    keys = _pairs(args.key, "--key")
    parties = list(agreement.party_names)
    operator = agreement.operator.name
    unknown = sorted(set(data) - set(parties)) + sorted(set(keys) - {*parties, operator})
    if unknown:
        raise ConfigurationError(
            f"unknown party(ies) {', '.join(unknown)}: the agreement names {', '.join(parties)}"
        )
    missing = [p for p in parties if p not in data]
    if missing:
        raise ConfigurationError(f"no --data for party(ies) {', '.join(missing)}")
    # --keys DIR, else the agreement's folder, else keys/ beside it or here (`vfm keygen
    # --out keys/` as the README does)
    keys_dirs = (
        [Path(args.keys).expanduser()]
        if args.keys
        else [agreement_path.parent, agreement_path.parent / "keys", Path("keys")]
    )
    files = {}
    for party in parties:
        candidates = _key_candidates(party, keys, keys_dirs)
        key = next((c for c in candidates if c.is_file()), None)
        if key is None:
            looked = ", ".join(str(c) for c in candidates)
            raise ConfigurationError(
                f"no private key for party '{party}': looked for {looked} "
                f"(use --keys DIR or --key {party}=FILE)"
            )
        if not data[party].is_file():
            raise ConfigurationError(f"--data {party}={data[party]}: no such file")
        files[party] = PartyFiles(data_path=data[party], key_path=key)
    installed = Path(args.workdir).expanduser() / "server" / f"{operator}.key"
    # as for a party, or operator/ beside the agreement (the layout `vfm demo` prepares)
    candidates = _key_candidates(operator, keys, [*keys_dirs, agreement_path.parent / "operator"])
    operator_key = next((c for c in candidates if c.is_file()), None)
    if operator_key is None and not installed.is_file():
        looked = ", ".join(str(c) for c in [*candidates, installed])
        raise ConfigurationError(
            f"no private key for the operator '{operator}' (the agreement's server operator): "
            f"looked for {looked} (use --keys DIR or --key {operator}=FILE)"
        )
    return agreement_path, files, operator_key


def _trained_kind(workdir: Path, agreement_path: Path) -> str:
    """The job kind the label owner's model slice was trained as (score uses that model)."""
    from vfm_flower.agreement import SignedAgreement

    lo = SignedAgreement.load(agreement_path).agreement.label_owner
    meta = workdir / "parties" / lo / "model" / "slice.json"
    try:
        return str(json.loads(meta.read_text(encoding="utf-8"))["model"])
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigurationError(
            f"no trained model in {workdir} (looked for {meta}): run `vfm local train` with "
            "this --workdir first"
        ) from exc


def _job_config(args: argparse.Namespace, job: str) -> dict:
    config = {"job": job, "model": args.model or "logistic"}
    if getattr(args, "iterations", None):
        config["max-iterations"] = args.iterations
    for option, key in (
        ("l2", "l2"),
        ("seed", "holdout-seed"),
        ("holdout_fraction", "holdout-fraction"),
        ("objective", "objective"),
        ("classes", "classes"),
        ("trees", "trees"),
        ("depth", "depth"),
        ("bins", "bins"),
        ("learning_rate", "learning-rate"),
        ("min_node_rows", "min-node-rows"),
    ):
        if getattr(args, option, None) is not None:
            config[key] = getattr(args, option)
    return config


def _refuse_overwriting_a_model(workdir: Path, agreement_path: Path, force: bool) -> None:
    """Retraining replaces the parties' model slices: only with ``--force``, and saying where
    the old ones are (nothing is touched before this check)."""
    from vfm_flower.agreement import SignedAgreement

    lo = SignedAgreement.load(agreement_path).agreement.label_owner
    slices = sorted((workdir / "parties").glob("*/model/slice.json"))
    meta = workdir / "parties" / lo / "model" / "slice.json"
    meta = meta if meta.is_file() else (slices[0] if slices else meta)
    if slices and not force:
        try:
            trained = json.loads(meta.read_text(encoding="utf-8"))
            what = f"a {trained.get('model', 'trained')} model"
        except (OSError, ValueError):
            what = "a trained model"
        raise ConfigurationError(
            f"{workdir} already holds {what}, under {workdir / 'parties'}/NAME/model: pass "
            "--force to replace it, or choose another --workdir"
        )


def cmd_local_train(args: argparse.Namespace) -> int:
    from vfm_flower.cli.progress import attach_progress
    from vfm_flower.runtime.local_job import run_local_job

    console = attach_progress(args.quiet)
    agreement_path, files, operator_key = _party_files(args)
    workdir = Path(args.workdir).expanduser().resolve()
    if workdir.exists() and not workdir.is_dir():
        raise ConfigurationError(f"--workdir {workdir} is a file, not a directory")
    _refuse_overwriting_a_model(workdir, agreement_path, args.force)
    result = run_local_job(
        agreement_path, files, workdir, _job_config(args, "train"), operator_key=operator_key
    )
    public = result["public"]
    if args.model == "secureboost":
        metric = {"multiclass": "macro_auc", "squared_error": "r2"}.get(args.objective, "auc")
        console.print(
            f"trained {public.get('trees')} trees on {result['joint_rows']:,} aligned rows "
            f"({public.get('rounds_per_tree')} rounds a tree); hold-out {metric} "
            f"{public.get(metric, float('nan')):.4f}"
        )
        console.print(f"each party's part of the model: {workdir / 'parties'}/NAME/artifacts")
        return 0
    metric = "r2" if args.model == "linear" else "auc"
    federated = public.get(metric, float("nan"))
    own_only = public.get(f"{metric}_label_owner_only", float("nan"))
    console.print(
        f"trained on {result['joint_rows']:,} aligned rows in {public.get('iterations')} "
        f"iterations; hold-out {metric} {federated:.4f} (label owner's columns alone: "
        f"{own_only:.4f})"
    )
    console.print(f"model slices under {workdir / 'parties'}; server result {workdir / 'server'}")
    return 0


def cmd_local_score(args: argparse.Namespace) -> int:
    from vfm_flower.agreement import SignedAgreement
    from vfm_flower.cli.progress import attach_progress
    from vfm_flower.runtime.local_job import run_local_job

    console = attach_progress(args.quiet)
    agreement_path, files, operator_key = _party_files(args)
    workdir = Path(args.workdir).expanduser().resolve()
    out = Path(args.out).expanduser()
    if out.exists() and not args.force:
        raise ConfigurationError(f"{out} exists: choose another --out or pass --force")
    if args.segments:
        from vfm_flower.segments import parse_segments

        parse_segments(args.segments)  # a bad spec is refused before any party is contacted
    if args.model is None:
        args.model = _trained_kind(workdir, agreement_path)
        console.print(f"scoring with the trained {args.model} model in {workdir}")
    result = run_local_job(
        agreement_path, files, workdir, _job_config(args, "score"), operator_key=operator_key
    )
    agreement = SignedAgreement.load(agreement_path).agreement
    scores = workdir / "parties" / agreement.result_owner / "scores.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial"
    if args.segments:
        _write_audience(scores, tmp, out, args.segments, agreement.min_cohort, console)
    else:
        shutil.copyfile(scores, tmp)
    os.replace(tmp, out)
    console.print(f"scored {result['public'].get('scored_rows', 0):,} customers -> {out}")
    return 0


def _write_audience(scores_csv, tmp, out, spec, min_cohort, console) -> None:
    """Add a ``segment`` column; write per-segment summaries (small ones suppressed)."""
    import pandas as pd
    from rich.table import Table

    from vfm_flower.report import assign_segments, segment_summaries

    frame = pd.read_csv(scores_csv, dtype={"id": str}, keep_default_na=False)
    if "score" not in frame.columns:
        raise ConfigurationError(
            "--segments bands one score per customer: a multiclass model gives one per class"
        )
    segment_of_row, segments = assign_segments(frame["score"].to_numpy(dtype=float), spec)
    frame["segment"] = segment_of_row
    summaries = segment_summaries(segment_of_row, None, min_cohort, segments=segments)
    frame.to_csv(tmp, index=False)
    summary_path = out.with_name(out.stem + ".segments.json")
    summary_tmp = summary_path.with_name(f".{summary_path.name}.partial")
    summary_tmp.write_text(json.dumps(summaries, indent=2), encoding="utf-8")
    os.replace(summary_tmp, summary_path)
    table = Table("segment", "rows", "share", title=f"audience segments ({summary_path.name})")
    for item in summaries:
        if item.get("suppressed"):
            table.add_row(item["segment"], "suppressed", f"< min cohort {min_cohort}")
        else:
            table.add_row(item["segment"], f"{item['rows']:,}", f"{item['share']:.1%}")
    console.print(table)


def cmd_local_run(args: argparse.Namespace) -> int:
    """Run any vertical Flower App (its ServerApp and ClientApp) in-process."""
    from vfm_flower.cli.progress import attach_progress
    from vfm_flower.runtime.local_job import load_flower_app, run_local_app

    console = attach_progress(args.quiet)
    server_app, client_app, defaults = load_flower_app(Path(args.app).expanduser())
    agreement_path, files, operator_key = _party_files(args)
    workdir = Path(args.workdir).expanduser().resolve()
    overrides = {}
    if args.run_config:
        from flwr.common.config import parse_config_args

        try:
            overrides = parse_config_args(args.run_config)
        except ValueError as exc:
            raise ConfigurationError(f"--run-config: {exc}") from exc
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigurationError(
            f"--run-config key(s) {', '.join(unknown)} are not declared by the app "
            f"(it declares: {', '.join(sorted(defaults)) or 'nothing'})"
        )
    result = run_local_app(
        server_app,
        client_app,
        agreement_path,
        files,
        workdir,
        {**defaults, **overrides},
        operator_key=operator_key,
    )
    console.print(
        f"{result.get('kind', 'job')} {result.get('job', '')}: {result.get('joint_rows')} "
        f"aligned rows, {result.get('total_rounds')} rounds; released: "
        f"{json.dumps(result.get('public', {}), sort_keys=True)}"
    )
    console.print(
        f"server result {workdir / 'server' / 'result.json'}; parties' outputs under "
        f"{workdir / 'parties'}"
    )
    return 0


def _add_job_options(parser: argparse.ArgumentParser, *, model: bool = True) -> None:
    parser.add_argument("--agreement", required=True, help="the signed agreement TOML")
    parser.add_argument(
        "--data", action="append", metavar="NAME=CSV", help="a party's CSV file (one per party)"
    )
    parser.add_argument("--workdir", required=True, help="work dir (server/ and parties/NAME/)")
    if model:
        parser.add_argument(
            "--model",
            choices=("logistic", "linear", "secureboost"),
            help="job kind (train: default logistic; score: the kind the slices were trained as)",
        )
    parser.add_argument("--keys", help="directory with NAME.key files (default: the agreement's)")
    parser.add_argument(
        "--key", action="append", metavar="NAME=FILE", help="one party's (or the operator's) key"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def register(subparsers: argparse._SubParsersAction) -> None:
    local = subparsers.add_parser(
        "local",
        help="run a job for several parties on this machine (in-process Flower runner)",
    )
    local_sub = local.add_subparsers(dest="local_command", metavar="COMMAND")
    local_sub.required = True
    train = local_sub.add_parser("train", help="align, train and evaluate")
    _add_job_options(train)
    train.add_argument("--iterations", type=int, help="training iterations at most")
    train.add_argument("--l2", type=float, help="L2 penalty (default 1e-3)")
    train.add_argument(
        "--seed",
        type=int,
        help="seed of the hold-out split (default 0: fixed per agreement, the same customers "
        "held out in every job; another seed is another split)",
    )
    train.add_argument(
        "--holdout-fraction", type=float, help="share of aligned rows held out (default 0.3)"
    )
    train.add_argument(
        "--force", action="store_true", help="replace a model already trained in --workdir"
    )
    trees = train.add_argument_group("gradient-boosted trees (--model secureboost)")
    trees.add_argument(
        "--objective",
        choices=("binary", "multiclass", "squared_error"),
        help="binary (default), multiclass (next-best-offer: set --classes) or squared_error",
    )
    trees.add_argument("--classes", type=int, help="number of classes (multiclass)")
    trees.add_argument("--trees", type=int, help="boosting rounds (default 20)")
    trees.add_argument("--depth", type=int, help="depth of every tree (default 5)")
    trees.add_argument("--bins", type=int, help="quantile bins per column (default 32)")
    trees.add_argument("--learning-rate", type=float, help="leaf shrinkage (default 0.3)")
    trees.add_argument(
        "--min-node-rows",
        type=int,
        help="fewest training customers in a node the trees split (default 100)",
    )
    train.set_defaults(func=cmd_local_train)
    score = local_sub.add_parser("score", help="align new ids and score them with trained slices")
    _add_job_options(score)
    score.add_argument("--out", required=True, help="SCORES.csv: columns id, score")
    score.add_argument("--force", action="store_true", help="overwrite --out")
    score.add_argument(
        "--segments",
        metavar="SPEC",
        help="add a segment column: 'deciles' or bands like 'top10,10-30,rest'; writes "
        "OUT.segments.json with per-segment counts (segments under the minimum cohort are "
        "suppressed)",
    )
    score.set_defaults(func=cmd_local_score)
    from vfm_flower.cli.clean_room import register_local

    register_local(local_sub, _add_job_options)
    run = local_sub.add_parser(
        "run", help="run any vertical Flower App (its own ServerApp and ClientApp) in-process"
    )
    run.add_argument("--app", required=True, help="the Flower App directory (its pyproject.toml)")
    run.add_argument("--agreement", required=True, help="the signed agreement TOML")
    run.add_argument(
        "--data", action="append", metavar="NAME=CSV", help="a party's CSV file (one per party)"
    )
    run.add_argument("--workdir", required=True, help="work dir (server/ and parties/NAME/)")
    run.add_argument("--keys", help="directory with NAME.key files (default: the agreement's)")
    run.add_argument(
        "--key", action="append", metavar="NAME=FILE", help="one party's (or the operator's) key"
    )
    run.add_argument(
        "--run-config", action="append", metavar="'K=V ...'", help="run-config overrides (TOML)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.set_defaults(func=cmd_local_run)

    demo = subparsers.add_parser(
        "demo",
        help="run the whole vertical job on the embedded Caravan demo (three parties)",
        description=(
            "Create three demo parties (data broker, bank, insurer) with keys, data and a signed "
            "agreement, then align, train, evaluate and score them in-process."
        ),
    )
    demo.add_argument("--workdir", default="vfm-demo", help="output directory (default: vfm-demo)")
    demo.add_argument("--force", action="store_true", help="replace an existing work dir")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    demo.add_argument("--iterations", type=int, default=30, help="training iterations at most")
    demo.add_argument(
        "--prepare-only",
        action="store_true",
        help="only create the demo collaboration (for `flwr run` and the deployment example)",
    )
    demo.add_argument("--json", action="store_true", help="print the server's result as JSON")
    demo.add_argument(
        "--seed", type=int, default=2000, help="seed of the hold-out split (0: random)"
    )
    demo.set_defaults(func=cmd_demo)
