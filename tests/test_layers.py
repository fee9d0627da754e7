"""The layer rules of DESIGN.md, enforced by parsing the imports of every module under src/trainfer.

    L6  __main__ (`python -m trainfer`)
    L5  cli, pipeline
    L4  serve (runtime only), web (runtime only), bench, report, tuning, auditing, federating
    L3  exporting
    L2  training, models, data, runtime
    L1  features
    L0  errors, config, _imports, _atomic, _timing, _energy, _env, _variants, _signals (private helpers count as L0)

Lower layers never import higher ones. Packages on one layer do not import each other, except
training -> data and training -> models (training wires them together), cli -> pipeline, and
anything -> errors (the root error).
Every import counts: module level, inside functions, under TYPE_CHECKING, and import_module("...")
or require("...") with a literal name.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "trainfer"

ROOT = "<trainfer>"  # src/trainfer/__init__.py

LAYERS: dict[str, int] = {
    "errors": 0, "config": 0, "_imports": 0, "_atomic": 0, "_timing": 0, "_energy": 0, "_env": 0, "_variants": 0,
    "_signals": 0,
    "features": 1,
    "training": 2, "models": 2, "data": 2, "runtime": 2,
    "exporting": 3,
    "serving": 4, "benching": 4, "reporting": 4,
    # the browser page of a bundle: reads bundles through runtime, ships onnxruntime-web from npm
    "web": 4,
    # tuning orchestrates runs of the loop, and for the latency objective it exports and times each trial
    "tuning": 4,
    # the membership-inference audit trains reference models through the loop, like a tuner's trials
    "auditing": 4,
    # federated learning runs the loop once per client and round (Flower drives the rounds)
    "federating": 4,
    "cli": 5, "pipeline": 5, "__main__": 6,  # `python -m trainfer`: the console script, above the CLI
}
# The CLI is the entry point of the pipeline too: `trainfer run` calls it.
SAME_LAYER_ALLOWED = {("training", "data"), ("training", "models"), ("cli", "pipeline")}
ANYONE_MAY_IMPORT = {"errors"}
# Beyond the layer order: serve talks to bundles through the runtime only.
ONLY_FROM = {"serving": {"runtime", "features", *(c for c, lvl in LAYERS.items() if lvl == 0)},
             "web": {"runtime", *(c for c, lvl in LAYERS.items() if lvl == 0)}}
# Shipped in inference bundles or imported by everything: torch must never load because of them.
NO_TORCH = {"errors", "config", "_imports", "_atomic", "_timing", "_energy", "_env", "_variants", "_signals",
            "features", "runtime", "serving", "web", ROOT}


@dataclass(frozen=True)
class Import:
    target: str  # absolute dotted module name, e.g. "trainfer.data.split" or "torch.nn"
    line: int
    type_only: bool


def module_name(path: Path, pkg: Path = PKG) -> str:
    rel = path.relative_to(pkg.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def component(module: str) -> str | None:
    """trainfer.data.split -> "data"; trainfer -> ROOT; anything outside trainfer -> None."""
    parts = module.split(".")
    if parts[0] != "trainfer":
        return None
    return parts[1] if len(parts) > 1 else ROOT


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(source: str, module: str, is_package: bool) -> list[Import]:
    """Every import in ``source`` (the module ``module``), resolved to absolute names."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, node.lineno, type_only) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append(Import(mod, node.lineno, type_only))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            found.extend(Import(f"{mod}.{a.name}", node.lineno, type_only) for a in node.names if a.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if name in ("import_module", "require", "__import__"):
                found.append(Import(node.args[0].value, node.lineno, type_only))
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(tree, False)
    return found


def _lazy_names() -> dict[str, str]:
    """The root package's lazily exported names -> the module that defines them."""
    tree = ast.parse((PKG / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _existing(target: str) -> bool:
    rel = Path(*target.split(".")[1:])
    return (PKG / rel).with_suffix(".py").is_file() or (PKG / rel / "__init__.py").is_file()


def violations(src_module: str, imports: list[Import], lazy: dict[str, str]) -> list[str]:
    me = component(src_module)
    problems: list[str] = []
    for imp in imports:
        where = f"{src_module}:{imp.line} imports {imp.target}"
        top = imp.target.split(".")[0]
        if top == "torch" and me in NO_TORCH:
            problems.append(f"{where}: {me} must not import torch")
            continue
        other = component(imp.target)
        if other is None or other == me:
            continue
        if other == ROOT:
            continue  # `from trainfer import X`: resolved below through the submodule or lazy name
        if other not in LAYERS and imp.target.count(".") == 1 and not _existing(imp.target):
            # `from trainfer import Run`: a name, not a module; the lazy table says where it lives
            if imp.target.split(".")[1] in lazy:
                other = component(lazy[imp.target.split(".")[1]])
            else:
                continue
        if me == ROOT:
            if not imp.type_only and LAYERS.get(other, 99) > 0:
                problems.append(f"{where}: `import trainfer` must stay light (only L0 at import time)")
            continue
        if me not in LAYERS:
            problems.append(f"{src_module}: package {me!r} is not in the layer map; add it (tests/test_layers.py)")
            break
        if other not in LAYERS:
            problems.append(f"{where}: {other!r} is not in the layer map; add it (tests/test_layers.py)")
            continue
        if other in ANYONE_MAY_IMPORT:
            continue
        if me in ONLY_FROM and other not in ONLY_FROM[me]:
            problems.append(f"{where}: {me} may only use {sorted(ONLY_FROM[me])}")
        if LAYERS[other] > LAYERS[me]:
            problems.append(f"{where}: L{LAYERS[me]} {me} imports higher layer L{LAYERS[other]} {other}")
        elif LAYERS[other] == LAYERS[me] and (me, other) not in SAME_LAYER_ALLOWED:
            problems.append(f"{where}: {me} and {other} are both on L{LAYERS[me]} and must not import each other")
    return problems


def _all_modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_respects_the_layers() -> None:
    modules = _all_modules()
    assert len(modules) > 10, f"found only {len(modules)} modules under {PKG}"
    lazy = _lazy_names()
    assert lazy, "could not read trainfer._LAZY"
    problems = []
    for path in modules:
        name = module_name(path)
        problems += violations(name, imports_of(path.read_text(), name, path.name == "__init__.py"), lazy)
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_every_top_level_module_is_in_the_layer_map() -> None:
    tops = {p.stem if p.is_file() else p.name for p in PKG.iterdir()
            if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()}
    assert tops - set(LAYERS) == set(), "add these to LAYERS in tests/test_layers.py and to DESIGN.md"


# ---- the checker itself catches what it should ------------------------------------------------

def _check(module: str, source: str, is_package: bool = False) -> list[str]:
    return violations(module, imports_of(textwrap.dedent(source), module, is_package), _lazy_names())


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("trainfer.features.tabular", "import torch\n", "must not import torch"),
    ("trainfer.config", "def f():\n    from torch import nn\n", "must not import torch"),
    ("trainfer.features.image", "from trainfer._imports import require\nrequire('torch')\n", "must not import torch"),
    ("trainfer.features.tabular", "from trainfer.data import split\n", "higher layer"),
    ("trainfer.features.tabular", "from ..data import split\n", "higher layer"),
    ("trainfer.features.image", "from .. import train\n", "higher layer"),
    ("trainfer.errors", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from trainfer.training import Run\n",
     "higher layer"),
    ("trainfer.data.files", "from trainfer.models import build_model\n", "both on L2"),
    ("trainfer.models.mlp", "from trainfer.training.run import Run\n", "both on L2"),
    ("trainfer.runtime.bundle", "from trainfer.training import Run\n", "both on L2"),
    ("trainfer.data", "from trainfer import Run\n", "both on L2"),
    ("trainfer.exporting.writer", "from trainfer import cli\n", "higher layer"),
    ("trainfer.serving.app", "from trainfer.exporting import export\n", "may only use"),
    ("trainfer", "from trainfer.training import train\n", "must stay light"),
    ("trainfer.config", "import importlib\nimportlib.import_module('trainfer.cli')\n", "higher layer"),
    ("trainfer.newthing", "from trainfer.errors import TrainferError\n", "not in the layer map"),
])
def test_checker_reports_violations(module: str, source: str, expected: str) -> None:
    problems = _check(module, source)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(("module", "source"), [
    ("trainfer.training.loop",
     "import torch\nfrom trainfer.data import prepare\nfrom trainfer.models import build_model\n"),
    ("trainfer.training", "from .run import Run\nfrom . import loop\n"),
    ("trainfer.config", "from trainfer.errors import ConfigError\n"),
    ("trainfer.cli", "from trainfer.training import train\nfrom trainfer.exporting import export\n"),
    ("trainfer.serving.app", "from trainfer.runtime import load\nfrom trainfer.errors import InputError\n"),
    ("trainfer",
     "from trainfer.errors import TrainferError\nif TYPE_CHECKING:\n    from trainfer.training import Run\n"),
])
def test_checker_allows_legal_imports(module: str, source: str) -> None:
    assert _check(module, source, is_package=module in ("trainfer", "trainfer.training")) == []


# ---- at run time: the light side really loads without torch ------------------------------------

BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test ({name})")
            return None

    sys.meta_path.insert(0, BlockTorch())
    for m in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
        del sys.modules[m]
    try:
        import torch  # noqa
    except ImportError:
        pass
    else:
        raise SystemExit("the torch blocker does not work")
""")


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


def test_features_work_without_torch() -> None:
    proc = _run_python("""
        import json
        import numpy as np
        import pandas as pd
        import trainfer, trainfer.config, trainfer.errors, trainfer._atomic, trainfer._imports
        from trainfer.features import Features, ImageFeatures, TabularFeatures, Target

        frame = pd.DataFrame({"a": [1.0, None, 3.0, 4.0], "c": ["x", "y", None, "x"]})
        f = Features(TabularFeatures.fit(frame), Target.fit(np.array(["p", "q", "p", "q"], dtype=object),
                     "classification"))
        again = Features.from_dict(json.loads(json.dumps(f.to_dict())))
        X = again.transform([{"a": 2.0, "c": "zzz"}])
        assert X.shape == (1, 4) and X[0, 1:].tolist() == [0.0, 0.0, 1.0], X
        assert np.array_equal(again.transform(frame), f.transform(frame))
        img = ImageFeatures.fit(np.zeros((2, 8, 8, 3), dtype=np.uint8) + 7)
        assert img.transform(np.full((1, 8, 8, 3), 7, dtype=np.uint8)).shape == (1, 3, 8, 8)
        loaded = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        assert not loaded, loaded
        print("features ok without torch")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "features ok without torch" in proc.stdout


def test_cli_help_works_without_torch() -> None:
    proc = _run_python("""
        from trainfer.cli import main
        for argv in (["--help"], ["train", "--help"], ["evaluate", "--help"]):
            try:
                main(argv)
            except SystemExit as exc:
                assert exc.code in (0, None), (argv, exc.code)
        assert "torch" not in sys.modules
        print("help ok without torch")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "help ok without torch" in proc.stdout


def test_web_side_loads_without_torch() -> None:
    proc = _run_python("""
        import trainfer.web, trainfer.web.site, trainfer.web.server, trainfer.web.assets
        from trainfer.cli import main
        try:
            main(["web", "--help"])
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        loaded = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        assert not loaded, loaded
        print("web ok without torch")
    """)
    assert proc.returncode == 0, proc.stderr
    assert "web ok without torch" in proc.stdout
