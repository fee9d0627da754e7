"""What every verb promises when it cannot do its work: one `error:` line (and a `hint:`), never a traceback.

Covers a missing optional extra (each verb run in a process where the extra's modules cannot be
imported), click's usage errors (bad option values, unknown options) and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SRC, assert_user_error, run_main, start_cli

# A process in which the named top-level modules cannot be imported, exactly as when they are not installed
# (find_spec raises, so both `import x` and importlib.util.find_spec("x") fail), then the console script.
BLOCKED = textwrap.dedent("""
    import sys
    BLOCK = set(sys.argv[1].split(","))

    class _NotInstalled:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCK:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NotInstalled())
    from trainfer.cli import main
    main(sys.argv[2:])
""")


def run_blocked(blocked: list[str], args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", BLOCKED, ",".join(blocked), *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


class _Res:
    def __init__(self, proc: subprocess.CompletedProcess, args: list[str]) -> None:
        self.args, self.returncode, self.stdout, self.stderr = args, proc.returncode, proc.stdout, proc.stderr


# verb arguments (placeholders are filled per test), the modules made unimportable, the extra the hint names
VERBS = [
    (["train", "--data", "iris", "--out", "{tmp}/run"], ["torch"], "train"),
    (["train", "--data", "iris", "--out", "{tmp}/run"], ["safetensors"], "train"),
    (["evaluate", "{tmp}/run"], ["torch"], "train"),
    (["export", "{tmp}/run", "--out", "{tmp}/bundle"], ["onnx", "onnxscript"], "export"),
    (["optimize", "{tmp}/run", "--out", "{tmp}/bundle"], ["torch_pruning"], "optimize"),
    (["bench", "{tmp}/run"], ["mlperf_loadgen"], "bench"),
    (["report", "{tmp}/run"], ["matplotlib"], "report"),
    (["run", "{tmp}/recipe.yaml"], ["torch"], "optimize,bench"),
    (["serve", "{bundle}"], ["fastapi", "uvicorn"], "serve"),
    (["serve", "{bundle}"], ["prometheus_client"], "serve"),
    (["predict", "{bundle}", "{tmp}/rows.parquet", "--out", "{tmp}/preds.csv"], ["pyarrow"], "train"),
]


@pytest.mark.parametrize(("args", "blocked", "extra"), VERBS,
                         ids=[f"{a[0]}-without-{b[0]}" for a, b, _ in VERBS])
def test_a_missing_extra_is_an_error_naming_the_extra(args: list[str], blocked: list[str], extra: str,
                                                      tmp_path: Path, digits_bundle: Path) -> None:
    (tmp_path / "recipe.yaml").write_text("data: {source: iris}\nmodel: {name: mlp}\n")
    if "{tmp}/rows.parquet" in args:
        import pandas as pd

        pd.DataFrame(np.zeros((2, 64), dtype=np.float32), columns=[f"pixel_{i}" for i in range(64)]).to_parquet(
            tmp_path / "rows.parquet")
    argv = [a.format(tmp=tmp_path, bundle=digits_bundle) for a in args]
    res = _Res(run_blocked(blocked, argv, tmp_path), argv)
    line = assert_user_error(res, mentions=[blocked[0]])
    assert f"hint: pip install 'trainfer[{extra}]'" in res.stderr, res.stderr
    assert "is needed" in line


def test_help_works_without_the_extras(tmp_path: Path) -> None:
    res = run_blocked(["torch", "fastapi", "matplotlib", "onnx"], ["serve", "--help"], tmp_path)
    assert res.returncode == 0 and "Serve a bundle" in res.stdout, res.stderr


@pytest.mark.parametrize("args", [
    ["train", "--data", "digits", "--epochs", "abc", "--out", "x"],
    ["train", "--data", "digits", "--no-such-option"],
    ["optimize", "r", "--out", "b", "--max-accuracy-drop", "-1"],
    ["predict"],
    ["no-such-verb"],
])
def test_usage_errors_are_one_error_line_not_a_panel(args: list[str], capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = run_main(args, capsys)
    assert_user_error(res)
    assert not any(ch in res.stderr for ch in "╭│╰─"), res.stderr  # click/rich's boxed panel
    assert "--help" in res.stderr.splitlines()[-1]


def test_ctrl_c_during_training_says_what_was_kept(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--data", "digits", "--model", "mlp", "--epochs", "500", "--out", out, "--seed", "0",
            "--set", "train.patience=1000", "--set", "model.hidden=[16]"]
    proc = start_cli(args)
    state = out / "checkpoints" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: interrupted: last checkpoint epoch "), err
    epoch = json.loads(state.read_text())["epoch"]
    assert f"epoch {epoch} in {out}" in lines[0] and "--resume" in lines[0], (lines[0], epoch)



def test_ctrl_c_before_anything_was_written_says_to_run_the_command_again(tmp_path: Path) -> None:
    # `--resume` on a folder with no recorded recipe would train the default recipe, not the user's
    from trainfer.cli._common import _train_kept

    assert _train_kept({"out": tmp_path / "never-made"}) == "nothing was kept; run the same command again"


def test_ctrl_c_after_an_output_was_renamed_into_place_does_not_deny_it(tmp_path: Path) -> None:
    from trainfer.cli._common import _nothing_at

    kept = _nothing_at("out", "predictions were")
    out = tmp_path / "p.csv"
    assert kept({"out": out}).startswith("no predictions were written")
    out.write_text("id,prediction\n")
    assert "is whole" in kept({"out": out}) and "no predictions" not in kept({"out": out})
