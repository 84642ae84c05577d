"""Packaging and layering: what gets installed, and which layer may import what.

- Every package of the source tree is in ``pyproject.toml`` (a missing one breaks the wheel
  while an editable install hides it).
- The Flower adapters install as ``vfm_flower.strategies`` / ``vfm_flower.clients``: a Flower
  project with its own ``strategies`` and ``clients`` modules imports both.
- The core (``vfm_flower`` minus ``runtime``, ``cli`` and the adapters) never imports Flower or
  the adapter layer.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Flower-facing parts of the vfm_flower namespace; everything else is the Flower-free core.
ADAPTER_PARTS = ("runtime", "cli", "strategies", "clients")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_source_package_is_listed_for_the_wheel() -> None:
    setup = _pyproject()["tool"]["setuptools"]
    listed = set(setup["packages"])
    mapped = {pkg: ROOT / folder for pkg, folder in setup["package-dir"].items()}
    found = set()
    for init in (ROOT / "vfm_flower").rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        found.add(".".join(rel.parts))
    for pkg, folder in mapped.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder)
            found.add(".".join((pkg, *rel.parts)) if rel.parts else pkg)
    assert found == listed, f"pyproject packages differ from the tree: {found ^ listed}"


def test_the_repository_keeps_its_top_level_folders() -> None:
    for folder in ("vfm_flower", "strategies", "clients", "tests"):
        assert (ROOT / folder).is_dir()
    assert "strategies" not in _pyproject()["tool"]["setuptools"]["packages"]
    assert "clients" not in _pyproject()["tool"]["setuptools"]["packages"]


def _core_modules() -> list[Path]:
    out = []
    for path in (ROOT / "vfm_flower").rglob("*.py"):
        rel = path.relative_to(ROOT / "vfm_flower")
        # __init__.py re-exports the adapters lazily (tested below by importing the core)
        if rel.parts[0] in ADAPTER_PARTS or rel.name == "__main__.py" or rel == Path("__init__.py"):
            continue
        out.append(path)
    return out


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_core_imports_neither_flower_nor_the_adapters() -> None:
    bad = []
    for path in _core_modules():
        for name in _imports(path):
            top = name.split(".")
            if top[0] == "flwr" or (
                top[0] == "vfm_flower" and len(top) > 1 and top[1] in ADAPTER_PARTS
            ):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)
    assert len(_core_modules()) > 20  # the walk really saw the core


def test_a_project_with_its_own_strategies_and_clients_imports_both(tmp_path: Path) -> None:
    (tmp_path / "strategies.py").write_text("OWN = 'strategies'\n")
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "__init__.py").write_text("OWN = 'clients'\n")
    code = (
        "import strategies, clients\n"
        "from vfm_flower.strategies.server_app import app as server_app\n"
        "from vfm_flower.clients.client_app import app as client_app\n"
        "assert strategies.OWN == 'strategies' and clients.OWN == 'clients'\n"
        "from flwr.clientapp import ClientApp\n"
        "from flwr.serverapp import ServerApp\n"
        "print(isinstance(server_app, ServerApp), isinstance(client_app, ClientApp))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


def test_the_flower_app_template_points_at_the_installed_package(tmp_path: Path) -> None:
    from vfm_flower.cli.app import write_app

    target = write_app(tmp_path / "app")
    app = tomllib.loads(target.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "vfm_flower.strategies.server_app:app",
        "clientapp": "vfm_flower.clients.client_app:app",
    }
    assert not list((tmp_path / "app").glob("*.py"))


def test_importing_the_core_loads_no_flower_module() -> None:
    modules = sorted(
        ".".join(("vfm_flower", *p.relative_to(ROOT / "vfm_flower").with_suffix("").parts))
        for p in _core_modules()
    )
    modules = [m.removesuffix(".__init__") for m in modules]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "import vfm_flower\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'flwr'\n"
        "             or m.startswith(('vfm_flower.strategies', 'vfm_flower.clients')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_public_api_is_the_vfm_flower_namespace() -> None:
    import vfm_flower

    for name in vfm_flower.__all__:
        assert getattr(vfm_flower, name) is not None, name


def test_the_built_in_jobs_use_only_the_public_step_api() -> None:
    """No private shortcut: the regression's steps see a PartyContext, nothing underneath."""
    internals = {"runtime", "request", "reply"}
    for name in ("training", "evaluation", "scoring"):
        path = ROOT / "vfm_flower" / "steps" / f"{name}.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert not (node.value.id == "ctx" and node.attr in internals), (
                    f"{path.name} uses ctx.{node.attr}"
                )
            if isinstance(node, ast.ImportFrom) and node.module == "vfm_flower.party":
                assert {a.name for a in node.names} <= {"StepRegistry"}, path.name
