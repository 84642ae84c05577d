#!/usr/bin/env bash
# Wheel check: build the vfm-flower wheel, install it into a fresh virtual environment outside
# the repository, and prove that the installed package works on its own, from a working
# directory outside the repository (so the source tree cannot be imported):
#   1. build the wheel from a clean copy of the tracked sources and check what it contains;
#   2. install it (with its dependencies from the package index) into a fresh venv;
#   3. `vfm demo`, `python -m vfm_flower demo --force`, `vfm app init`, and an import of every
#      module of the installed package;
#   4. the real-process deployment example (flower-superlink + 3 flower-supernode) run with the
#      wheel venv's executables, and no Flower process of this run left behind.
#
# Usage: .ci/wheel_check.sh   (env: PYTHON, the interpreter for the venv, default python3;
#        VFM_WHEEL_CHECK_KEEP=1 keeps the temporary directory for inspection)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Nothing from the caller's environment may point Python at the source tree.
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE
export PYTHONNOUSERSITE=1

START=$SECONDS
STEP_START=$SECONDS
log() { echo "[wheel-check] $*"; }
step() { STEP_START=$SECONDS; log "$*"; }
done_step() { log "  ... $* ($((SECONDS - STEP_START))s)"; }
fail() { echo "[wheel-check] FAILED: $*" >&2; exit 1; }
show_log() {  # show_log FILE: the last lines of a step's output, on stderr
  [ -f "$1" ] || return 0
  echo "[wheel-check] last lines of $1:" >&2
  tail -25 "$1" >&2
}

TMP="$(mktemp -d "${TMPDIR:-/tmp}/vfm-wheel-check.XXXXXX")"
TMP="$(cd "$TMP" && pwd -P)"
case "$TMP/" in
  "$ROOT"/*) fail "temporary directory $TMP is inside the repository (set TMPDIR elsewhere)" ;;
esac
DEPLOY="$TMP/deploy"

# Flower processes that belong to this run: run.sh exports FLWR_HOME=$DEPLOY/flwr-home, which
# every process it starts (and their flwr-serverapp/flwr-clientapp children) inherits.
our_flower_pids() {
  local pid
  for pid in $(pgrep -f 'flower-super|flwr-serverapp|flwr-clientapp' 2>/dev/null || true); do
    [ "$pid" = "$$" ] && continue
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "FLWR_HOME=$DEPLOY/flwr-home" \
      || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$TMP/"; then
      echo "$pid"
    fi
  done
}

cleanup() {
  local code=$?
  trap - EXIT INT TERM
  local leftover
  leftover="$(our_flower_pids | tr '\n' ' ')"
  if [ -n "${leftover// /}" ]; then
    echo "[wheel-check] stopping Flower processes left by this run: $leftover" >&2
    # shellcheck disable=SC2086
    kill -TERM $leftover 2>/dev/null || true
    sleep 2
    # shellcheck disable=SC2086
    kill -KILL $leftover 2>/dev/null || true
  fi
  if [ "${VFM_WHEEL_CHECK_KEEP:-0}" = "1" ]; then
    echo "[wheel-check] kept $TMP" >&2
  else
    rm -rf "$TMP"
  fi
  [ "$code" -eq 0 ] || echo "[wheel-check] failed after $((SECONDS - START))s" >&2
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "repository $ROOT; temporary directory $TMP"

# --- 1. build the wheel ----------------------------------------------------------------------
# The venv is made first so that its own pip builds the wheel (nothing depends on the caller's
# environment). The build runs on a copy of the files git tracks (plus new, not ignored ones):
# a build in the work tree would write build/ and *.egg-info there, and setuptools would pack
# stale modules left in build/lib by an earlier build.
step "creating a fresh virtual environment in $TMP/venv ($("$PYTHON" --version 2>&1))"
"$PYTHON" -m venv "$TMP/venv" || fail "could not create a virtual environment with $PYTHON"
VENV="$TMP/venv"
VPY="$VENV/bin/python"
done_step "venv ready"

step "copying the sources to $TMP/src"
mkdir -p "$TMP/src"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) \
    | "$VPY" -c '
import os, shutil, sys
root, dest = sys.argv[1], sys.argv[2]
count = 0
for rel in sys.stdin.buffer.read().decode().split("\0"):
    src = os.path.join(root, rel)
    if not rel or not os.path.isfile(src):  # deleted in the work tree, or a submodule
        continue
    os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
    shutil.copy2(src, os.path.join(dest, rel))
    count += 1
print(f"[wheel-check]   {count} files")
' "$ROOT" "$TMP/src" || fail "could not copy the sources"
else
  tar -C "$ROOT" --exclude=.git --exclude=.venv --exclude=build --exclude='*.egg-info' \
    --exclude=__pycache__ -cf - . | tar -C "$TMP/src" -xf - || fail "could not copy the sources"
fi
[ -f "$TMP/src/pyproject.toml" ] || fail "pyproject.toml missing from the source copy"

step "building the wheel (pip wheel --no-deps)"
mkdir -p "$TMP/dist"
(cd "$TMP/src" && "$VPY" -m pip wheel --quiet --no-deps -w "$TMP/dist" .) \
  >"$TMP/build.log" 2>&1 || { show_log "$TMP/build.log"; fail "pip wheel failed"; }
shopt -s nullglob
wheels=("$TMP"/dist/*.whl)
shopt -u nullglob
[ "${#wheels[@]}" -eq 1 ] || fail "expected exactly one wheel in $TMP/dist, found ${#wheels[@]}"
WHEEL="${wheels[0]}"
done_step "built $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"

step "checking the wheel's contents against pyproject.toml and the source tree"
"$VPY" - "$WHEEL" "$TMP/src" <<'PY' || fail "the wheel's contents are wrong (see above)"
import fnmatch, os, sys, tomllib, zipfile

wheel, src = sys.argv[1], sys.argv[2]
names = set(zipfile.ZipFile(wheel).namelist())
setup = tomllib.load(open(os.path.join(src, "pyproject.toml"), "rb"))["tool"]["setuptools"]
package_dir = setup.get("package-dir", {})
problems = []

def source_dir(package):
    if package in package_dir:
        return os.path.join(src, package_dir[package])
    parent, _, leaf = package.rpartition(".")
    return os.path.join(source_dir(parent), leaf) if parent else os.path.join(src, package)

expected = set()
for package in setup["packages"]:
    folder = source_dir(package)
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        problems.append(f"listed package {package} has no __init__.py in {folder}")
        continue
    # every sub-folder with an __init__.py must itself be listed, or the wheel drops it
    for entry in sorted(os.listdir(folder)):
        sub = f"{package}.{entry}"
        if os.path.isfile(os.path.join(folder, entry, "__init__.py")) and sub not in setup["packages"]:
            problems.append(f"source package {sub} is not listed in [tool.setuptools] packages")
    for entry in os.listdir(folder):
        if entry.endswith(".py"):
            expected.add(package.replace(".", "/") + "/" + entry)
for package, patterns in setup.get("package-data", {}).items():
    folder = source_dir(package)
    for pattern in patterns:
        sub, _, glob = pattern.rpartition("/")
        base = os.path.join(folder, sub)
        matches = [f for f in os.listdir(base) if fnmatch.fnmatch(f, glob)] if os.path.isdir(base) else []
        if not matches:
            problems.append(f"package-data {package}: {pattern} matches no file in the sources")
        for f in matches:
            expected.add("/".join(filter(None, [package.replace(".", "/"), sub, f])))
for missing in sorted(expected - names):
    problems.append(f"missing from the wheel: {missing}")
tops = {n.split("/")[0] for n in names}
dist_info = {t for t in tops if t.endswith(".dist-info")}
if tops - dist_info != {"vfm_flower"} or len(dist_info) != 1:
    problems.append(f"unexpected top-level entries in the wheel: {sorted(tops)}")
else:
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info.pop()}/entry_points.txt").decode()
    if "vfm = vfm_flower.cli:main" not in entry_points:
        problems.append("the `vfm` console script is missing from entry_points.txt")
for problem in problems:
    print(f"[wheel-check]   {problem}", file=sys.stderr)
if problems:
    sys.exit(1)
py = sum(n.endswith(".py") for n in names)
print(f"[wheel-check]   {len(names)} files, {py} modules, top level: vfm_flower")
PY
done_step "wheel contents ok"

# --- 2. install the wheel --------------------------------------------------------------------
step "installing the wheel and its dependencies into the fresh venv"
"$VPY" -m pip install --quiet "$WHEEL" >"$TMP/install.log" 2>&1 \
  || { show_log "$TMP/install.log"; fail "pip install of the wheel failed"; }
"$VPY" -m pip check >"$TMP/pip-check.log" 2>&1 \
  || { show_log "$TMP/pip-check.log"; fail "pip check: broken dependencies in the wheel venv"; }
done_step "installed: $("$VPY" -m pip list 2>/dev/null | grep -E '^(vfm-flower|flwr) ' | tr -s ' ' | tr '\n' ' ')"

# --- 3. the installed package, from outside the repository -----------------------------------
# PATH: the wheel venv first; the repository's own .venv (and any active venv) removed.
clean_path=""
IFS=: read -r -a path_entries <<<"$PATH"
for entry in "${path_entries[@]}"; do
  [ -n "$entry" ] || continue
  [ "$entry" = "$ROOT/.venv/bin" ] && continue
  [ -n "${VIRTUAL_ENV:-}" ] && [ "$entry" = "$VIRTUAL_ENV/bin" ] && continue
  clean_path="${clean_path:+$clean_path:}$entry"
done
export PATH="$VENV/bin:$clean_path"
export VIRTUAL_ENV="$VENV"
RUN="$TMP/run"
mkdir -p "$RUN"
cd "$RUN"

step "checking that the package and the executables come from the wheel venv (cwd $RUN)"
for exe in python vfm flwr flower-superlink flower-supernode flwr-serverapp flwr-clientapp; do
  where="$(command -v "$exe" || true)"
  [ "$where" = "$VENV/bin/$exe" ] || fail "$exe resolves to '${where:-nothing}', not $VENV/bin/$exe"
done
python -c "import vfm_flower, sys; assert '/site-packages/' in vfm_flower.__file__, vfm_flower.__file__" \
  || fail "vfm_flower is not imported from site-packages"
python - "$VENV" "$ROOT" <<'PY' || fail "vfm_flower is imported from the wrong place"
import sys, vfm_flower
venv, root = sys.argv[1], sys.argv[2]
path = vfm_flower.__file__
assert path.startswith(venv + "/") and "/site-packages/" in path, path
assert not path.startswith(root + "/"), path
assert not any(p == root or p.startswith(root + "/") for p in sys.path), sys.path
from importlib.metadata import version
dist, code = version("vfm-flower"), getattr(vfm_flower, "__version__", None)
print(f"[wheel-check]   vfm_flower from {path} (distribution vfm-flower {dist})")
assert code == dist, (
    f"vfm_flower.__version__ is {code!r} but the wheel's version (pyproject.toml) is {dist!r}"
)
PY

step "importing every module of the installed package"
python - "$VENV" <<'PY' || fail "a module of the installed package does not import (see above)"
import importlib, pkgutil, sys, traceback
import vfm_flower

venv = sys.argv[1]
errors = []
def onerror(name):
    errors.append((name, traceback.format_exc(limit=3)))
names = sorted(m.name for m in pkgutil.walk_packages(vfm_flower.__path__, "vfm_flower.", onerror))
for name in names:
    if name == "vfm_flower.__main__":  # runs the CLI on import; exercised with python -m below
        continue
    try:
        module = importlib.import_module(name)
    except Exception:
        errors.append((name, traceback.format_exc(limit=3)))
        continue
    if not module.__file__.startswith(venv + "/"):
        errors.append((name, f"imported from {module.__file__}, outside the wheel venv"))
for required in ("vfm_flower.strategies.server_app", "vfm_flower.clients.client_app"):
    if required not in names:
        errors.append((required, "not found in the installed package"))
for name, why in errors:
    print(f"[wheel-check]   {name}: {why}", file=sys.stderr)
if errors or len(names) < 30:
    sys.exit(f"{len(errors)} import problems among {len(names)} modules")
print(f"[wheel-check]   {len(names) - 1} modules imported")
PY
done_step "imports ok"

check_demo_outputs() {  # check_demo_outputs WORKDIR
  local f
  for f in parties/insurer/report.html parties/insurer/scores.csv; do
    [ -s "$1/$f" ] || fail "$1/$f is missing or empty after the demo"
  done
  [ "$(wc -l <"$1/parties/insurer/scores.csv")" -gt 100 ] || fail "$1/parties/insurer/scores.csv has too few rows"
}

step "vfm demo --workdir $RUN/demo-cli --iterations 3 --quiet"
timeout 900 vfm demo --workdir "$RUN/demo-cli" --iterations 3 --quiet >"$TMP/demo-cli.log" 2>&1 \
  || { show_log "$TMP/demo-cli.log"; fail "vfm demo exited non-zero"; }
check_demo_outputs "$RUN/demo-cli"
done_step "report.html and scores.csv written"

step "python -m vfm_flower demo --workdir $RUN/demo-module --iterations 3 --quiet --force"
mkdir -p "$RUN/demo-module" && echo stale >"$RUN/demo-module/stale.txt"  # --force replaces it
timeout 900 python -m vfm_flower demo --workdir "$RUN/demo-module" --iterations 3 --quiet --force \
  >"$TMP/demo-module.log" 2>&1 || { show_log "$TMP/demo-module.log"; fail "python -m vfm_flower demo exited non-zero"; }
check_demo_outputs "$RUN/demo-module"
[ ! -e "$RUN/demo-module/stale.txt" ] || fail "demo --force kept the old contents of its work dir"
done_step "report.html and scores.csv written"

step "vfm app init $RUN/app"
vfm app init "$RUN/app" >"$TMP/app-init.log" 2>&1 \
  || { show_log "$TMP/app-init.log"; fail "vfm app init exited non-zero"; }
python - "$RUN/app" <<'PY' || fail "the Flower App written by vfm app init is wrong"
import importlib, pathlib, sys, tomllib
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

app_dir = pathlib.Path(sys.argv[1])
pyproject = app_dir / "pyproject.toml"
assert pyproject.is_file(), f"{pyproject} not written"
app = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]
kinds = {"serverapp": ServerApp, "clientapp": ClientApp}
for key, kind in kinds.items():
    module, _, attr = app["components"][key].partition(":")
    obj = getattr(importlib.import_module(module), attr)
    assert isinstance(obj, kind), f"{key} {app['components'][key]} is not a {kind.__name__}"
assert not list(app_dir.rglob("*.py")), "the app directory holds code"
print(f"[wheel-check]   {pyproject}: components {app['components']}")
PY
if vfm app init "$RUN/app" >/dev/null 2>&1; then
  fail "vfm app init overwrote an existing pyproject.toml without --force"
fi
done_step "app ok"

# --- 4. the deployment example with the wheel venv's executables -----------------------------
step "deployment example: flower-superlink + 3 flower-supernode from the wheel venv (2 iterations)"
PORT="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# run.sh gives the SuperNodes the fixed ClientAppIo ports 9094-9096: say so if they are taken.
python - <<'PY' || fail "a SuperNode port of run.sh (9094-9096) is in use: another deployment running?"
import socket
for port in (9094, 9095, 9096):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
PY
set +e
VFM_PORT="$PORT" VFM_ITERATIONS=2 timeout 1200 bash "$ROOT/examples/local-deployment/run.sh" "$DEPLOY" \
  >"$TMP/deploy.log" 2>&1
deploy_code=$?
set -e
sed 's/^/[wheel-check]   /' "$TMP/deploy.log"
[ "$deploy_code" -eq 0 ] || fail "examples/local-deployment/run.sh exited $deploy_code"
grep -q '^\[deploy\] ok:' "$TMP/deploy.log" || fail "run.sh did not report '[deploy] ok:'"
[ -f "$DEPLOY/server/result.json" ] || fail "no $DEPLOY/server/result.json"
for party in broker bank insurer; do
  [ -f "$DEPLOY/parties/$party/model/slice.json" ] || fail "no model slice for $party"
done
# run.sh stops its process groups on exit: nothing of this run may still be there.
sleep 1
leftover="$(our_flower_pids | tr '\n' ' ')"
if [ -n "${leftover// /}" ]; then
  # shellcheck disable=SC2086
  ps -o pid=,args= -p "$(echo $leftover | tr ' ' ',')" >&2 || true
  fail "Flower processes of this run still running after run.sh: $leftover"
fi
done_step "deployment ok, no Flower process of this run left"

log "ok ($(basename "$WHEEL"), $((SECONDS - START))s)"
