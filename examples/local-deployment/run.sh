#!/usr/bin/env bash
# Real Flower Deployment Engine on loopback: one flower-superlink, one flower-supernode per
# party (each with its own node-config: party name, data, key, agreement, work dir), then the
# vertical job with `flwr run`. Checks the result and stops exactly the processes it started
# (by process group), also when the job fails.
#
# Usage: examples/local-deployment/run.sh [WORKDIR]
#   env: VFM_PORT (SuperLink HTTP port, default 8000), VFM_NODE_PORT (first SuperNode port,
#        default 9094), VFM_ITERATIONS (default 3), VFM_JOB_TIMEOUT (seconds, default 900),
#        VFM_TLS=1 (TLS with a throw-away CA made by make_certs.py instead of --insecure),
#        VFM_AUTH=1 (TLS and SuperNode authentication: each SuperNode's key registered with
#        `flwr supernode register`).
#   Another job than the built-in training on the demo: VFM_SETUP (a prepared collaboration:
#        agreement.toml, parties/NAME/NAME.csv + NAME.key and the operator's operator/NAME.key,
#        as `vfm demo --prepare-only`
#        writes; default: the demo), VFM_APP (a Flower App directory; default: `vfm app init`),
#        VFM_RUN_CONFIG (the run-config besides agreement-path and server-workdir),
#        VFM_MIN_JOINT (least joint rows expected, default 1000).
#   VFM_DROP_PARTY=NAME: stop NAME's SuperNode once the first training iteration started (a
#        partner that drops mid-job): the job must fail, naming NAME.
#   VFM_SCORE_SET=NAME: after the training job, each party puts a file NAME.csv into its
#        data-dir (node-config; the label owner a part of its customers) and a score job on
#        data set NAME runs on the same SuperNodes, without restarting any.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WORK="${1:-$(mktemp -d /tmp/vfm-deploy.XXXXXX)}"
PORT="${VFM_PORT:-8000}"
NODE_PORT="${VFM_NODE_PORT:-9094}"
ITERATIONS="${VFM_ITERATIONS:-3}"
JOB_TIMEOUT="${VFM_JOB_TIMEOUT:-900}"
TLS="${VFM_TLS:-0}"
AUTH="${VFM_AUTH:-0}"
[ "$AUTH" = "1" ] && TLS=1

mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
export FLWR_HOME="$WORK/flwr-home"
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
mkdir -p "$FLWR_HOME" "$WORK/logs"

PGIDS=()
cleanup() {
  local code=$?
  for pgid in "${PGIDS[@]:-}"; do
    [ -n "$pgid" ] && kill -TERM -- "-$pgid" 2>/dev/null || true
  done
  for pgid in "${PGIDS[@]:-}"; do
    [ -n "$pgid" ] || continue
    for _ in $(seq 1 50); do
      kill -0 -- "-$pgid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
  done
  exit "$code"
}
trap cleanup EXIT INT TERM

start_group() {  # start_group LOGFILE CMD...: run CMD in its own process group, remember it
  local log="$1"; shift
  setsid "$@" >"$log" 2>&1 &
  PGIDS+=("$!")
}

if [ -n "${VFM_SETUP:-}" ]; then
  SETUP="$(cd "$VFM_SETUP" && pwd)"
  echo "[deploy] using the prepared collaboration in $SETUP"
else
  echo "[deploy] preparing the demo collaboration in $WORK/demo"
  vfm demo --prepare-only --quiet --workdir "$WORK/demo" --force
  SETUP="$WORK/demo/setup"
fi
PARTIES=()
for dir in "$SETUP"/parties/*/; do
  name="$(basename "$dir")"
  [ -f "$dir/$name.key" ] && PARTIES+=("$name")
done
[ "${#PARTIES[@]}" -ge 2 ] || { echo "[deploy] no parties under $SETUP/parties" >&2; exit 1; }
# the operator signed the agreement too: the server runs with its key, from its own work dir
mkdir -p "$WORK/server"
OPERATOR_KEYS=("$SETUP"/operator/*.key)
[ -f "${OPERATOR_KEYS[0]}" ] || { echo "[deploy] no operator key under $SETUP/operator" >&2; exit 1; }
install -m 600 "${OPERATOR_KEYS[@]}" "$WORK/server/"

if [ "$TLS" = "1" ]; then
  python "$ROOT/examples/local-deployment/make_certs.py" "$WORK/certs" "${PARTIES[@]}"
  LINK_SECURITY=(--ssl-ca-certfile "$WORK/certs/ca.crt" --ssl-certfile "$WORK/certs/server.pem"
                 --ssl-keyfile "$WORK/certs/server.key")
  NODE_SECURITY=(--root-certificates "$WORK/certs/ca.crt")
  CONNECTION_SECURITY="root-certificates = \"$WORK/certs/ca.crt\""
  SCHEME=https
else
  LINK_SECURITY=(--insecure)
  NODE_SECURITY=(--insecure)
  CONNECTION_SECURITY="insecure = true"
  SCHEME=http
fi

[ "$AUTH" = "1" ] && LINK_SECURITY+=(--enable-supernode-auth)

echo "[deploy] starting flower-superlink on 127.0.0.1:$PORT ($SCHEME, supernode auth: $AUTH)"
start_group "$WORK/logs/superlink.log" flower-superlink "${LINK_SECURITY[@]}" \
  --disable-runtime-dependency-installation --host 127.0.0.1 --port "$PORT"
healthy() {
  python - "$SCHEME://127.0.0.1:$PORT/health" "$WORK/certs/ca.crt" >/dev/null 2>&1 <<'PY'
import ssl, sys, urllib.request
url, ca = sys.argv[1], sys.argv[2]
context = ssl.create_default_context(cafile=ca) if url.startswith("https") else None
urllib.request.urlopen(url, timeout=2, context=context)
PY
}
for _ in $(seq 1 120); do
  healthy && break
  sleep 0.5
done
healthy || {
  echo "[deploy] the SuperLink did not become healthy; log:" >&2
  tail -20 "$WORK/logs/superlink.log" >&2
  exit 1
}

cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local-deploy"

[superlink.local-deploy]
address = "127.0.0.1:$PORT"
$CONNECTION_SECURITY
TOML

if [ "$AUTH" = "1" ]; then
  for party in "${PARTIES[@]}"; do
    echo "[deploy] registering $party's SuperNode key"
    flwr supernode register "$WORK/certs/nodes/$party.pub" local-deploy \
      >>"$WORK/logs/register.log" 2>&1
  done
fi

i=0
for party in "${PARTIES[@]}"; do
  base="$SETUP/parties/$party"
  node_config="party=\"$party\" data-path=\"$base/$party.csv\" key-path=\"$base/$party.key\""
  node_config+=" agreement-path=\"$SETUP/agreement.toml\" work-dir=\"$WORK/parties/$party\""
  # more data sets: any NAME.csv put here later is data set NAME (run-config data-set)
  mkdir -p "$WORK/data/$party"
  node_config+=" data-dir=\"$WORK/data/$party\""
  echo "[deploy] starting flower-supernode for $party"
  node_auth=()
  [ "$AUTH" = "1" ] && node_auth=(--auth-supernode-private-key "$WORK/certs/nodes/$party")
  start_group "$WORK/logs/supernode-$party.log" flower-supernode "${NODE_SECURITY[@]}" \
    "${node_auth[@]}" \
    --superlink "127.0.0.1:$PORT" --port "$((NODE_PORT + i))" --node-config "$node_config"
  [ "$party" = "${VFM_DROP_PARTY:-}" ] && DROP_PGID="${PGIDS[-1]}"
  i=$((i + 1))
done


if [ -n "${VFM_APP:-}" ]; then
  APP="$(cd "$VFM_APP" && pwd)"
else
  # The built-in jobs' Flower App: one pyproject.toml pointing at the installed package.
  vfm app init "$WORK/app" --force >/dev/null
  APP="$WORK/app"
fi
run_job() {  # run_job LOG RESULT JOB-CONFIG: one `flwr run`; its result file must appear
  local log="$1" result="$2" config
  config="agreement-path=\"$SETUP/agreement.toml\" server-workdir=\"$WORK/server\" $3"
  rm -f "$result"
  set +e
  timeout "$JOB_TIMEOUT" flwr run "$APP" local-deploy --stream --run-config "$config" \
    >"$log" 2>&1
  local code=$?
  set -e
  if [ "$code" -ne 0 ] || [ ! -f "$result" ]; then
    echo "[deploy] the job failed (flwr run exit $code); last lines of its log:" >&2
    tail -30 "$log" >&2
    exit 1
  fi
}
if [ -n "${VFM_DROP_PARTY:-}" ]; then
  [ -n "${DROP_PGID:-}" ] || { echo "[deploy] no party ${VFM_DROP_PARTY} to drop" >&2; exit 2; }
  (  # a partner whose machine goes away mid-job
    for _ in $(seq 1 1800); do
      grep -q "\[vfm\] iteration 1/" "$WORK/logs/flwr-run.log" 2>/dev/null && break
      sleep 0.5
    done
    echo "[deploy] stopping ${VFM_DROP_PARTY}'s SuperNode mid-job"
    kill -KILL -- "-$DROP_PGID" 2>/dev/null || true
  ) &
fi
echo "[deploy] running the vertical job with flwr run ($APP)"
run_job "$WORK/logs/flwr-run.log" "$WORK/server/result.json" \
  "${VFM_RUN_CONFIG:-job=\"train\" model=\"logistic\" max-iterations=$ITERATIONS}"
python - "$WORK/server/result.json" "${VFM_MIN_JOINT:-1000}" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
joint = result.get("joint_rows") or 0
assert joint >= int(sys.argv[2]), f"unexpected joint row count {joint}"
print(f"[deploy] ok: {joint} aligned rows, {result['total_rounds']} rounds, result in {sys.argv[1]}")
PY
vfm audit verify "$WORK" --agreement "$SETUP/agreement.toml" >/dev/null \
  && echo "[deploy] audit logs intact"
# each company alone: its own log against the close certificates it holds
for company in "$WORK/server" "$WORK"/parties/*/; do
  vfm audit verify "$company" --agreement "$SETUP/agreement.toml" >/dev/null
done
echo "[deploy] each company's own audit log verified against its close certificates"
# one bundle of the whole collaboration, as an auditor would receive it
vfm audit export "$WORK/server" "$WORK/parties" --agreement "$SETUP/agreement.toml" \
  --out "$WORK/audit.tar.gz" --force >/dev/null
vfm audit verify "$WORK/audit.tar.gz" --agreement "$SETUP/agreement.toml" >/dev/null \
  && echo "[deploy] audit bundle verified: $WORK/audit.tar.gz"

if [ -n "${VFM_SCORE_SET:-}" ]; then
  # new customers arrive as a new file in each party's data-dir; the SuperNodes keep running
  python - "$SETUP" "$WORK/data" "$VFM_SCORE_SET" <<'PY'
import sys
from pathlib import Path

import pandas as pd

from vfm_flower.agreement import SignedAgreement

setup, data, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
agreement = SignedAgreement.load(setup / "agreement.toml").agreement
for party in agreement.party_names:
    frame = pd.read_csv(setup / "parties" / party / f"{party}.csv", dtype=str, keep_default_na=False)
    if party == agreement.label_owner:  # the label owner's campaign list: part of its customers
        frame = frame.iloc[: max(1, int(len(frame) * 0.6))]
    frame.to_csv(data / party / f"{name}.csv", index=False)
PY
  echo "[deploy] scoring data set '$VFM_SCORE_SET' on the running SuperNodes"
  run_job "$WORK/logs/flwr-score.log" "$WORK/server/result-score.json" \
    "job=\"score\" model=\"logistic\" data-set=\"$VFM_SCORE_SET\""
  python - "$WORK/server/result-score.json" "$VFM_SCORE_SET" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
scored = result["public"].get("scored_rows") or 0
assert scored > 0, "no customer scored"
print(f"[deploy] scored {scored} customers of data set '{sys.argv[2]}' without a restart")
PY
fi
