"""User mistakes: exit code 2, one `error:` line (and maybe one `hint:`), no traceback, no run dir.

Every case goes through ``trainfer.cli.main`` (the console script's entry point) in this process, so
torch is imported once; one of them also runs as a real process to check exit code and stderr end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import assert_user_error, run_cli, run_main, write_image_folder


def _cases(root: Path) -> dict[str, tuple[list[object], Path | None, list[str]]]:
    """name -> (CLI args, the --out dir that must not appear, words the error line must contain)."""
    table = root / "table.csv"
    pd.DataFrame({"a": np.arange(40.0), "b": np.arange(40) % 3, "label": ["x", "y"] * 20}).to_csv(table, index=False)

    single = root / "single.csv"
    pd.DataFrame({"a": np.arange(40.0), "label": ["only"] * 40}).to_csv(single, index=False)

    recipe = root / "bad.yaml"
    recipe.write_text("data:\n  source: iris\ntrain:\n  epochs: many\n  colour: red\n")

    images = write_image_folder(root / "imgs", per_class=4, size=8)
    (images / "red" / "broken.png").write_bytes(b"this is not a png at all \x00\x01\x02" * 10)

    def out(name: str) -> Path:
        return root / "runs" / name

    return {
        "missing_data_file": (["train", "--data", root / "nope.csv", "--target", "label", "--out", out("a")],
                              out("a"), ["nope.csv"]),
        "missing_target_column": (["train", "--data", table, "--target", "nope", "--out", out("b")],
                                  out("b"), ["nope"]),
        "unknown_model": (["train", "--data", "iris", "--model", "transformer9000", "--epochs", "1",
                           "--out", out("c")], out("c"), ["transformer9000"]),
        "unknown_dataset": (["train", "--data", "imagenet-42", "--out", out("d")], out("d"), ["imagenet-42"]),
        "recipe_unknown_key_and_wrong_type": (["train", recipe, "--out", out("e")], out("e"),
                                              ["train.colour", "train.epochs", "2 problems"]),
        "corrupt_image": (["train", "--data", images, "--model", "cnn", "--out", out("f"),
                           "--set", "data.image_size=8"], out("f"), ["broken.png"]),
        "single_class_target": (["train", "--data", single, "--target", "label", "--out", out("g")],
                                out("g"), ["single class", "label"]),
        "unknown_set_key": (["train", "--data", "iris", "--set", "train.lrr=0.1", "--out", out("h")],
                            out("h"), ["train.lrr", "unknown key"]),
        "set_without_value": (["train", "--data", "iris", "--set", "train.lr", "--out", out("i")],
                              out("i"), ["key=value"]),
        "evaluate_missing_run": (["evaluate", root / "no-such-run"], None, ["no-such-run"]),
    }


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[object], Path | None, list[str]]]:
    return _cases(tmp_path_factory.mktemp("bad-inputs"))


CASES = [
    "missing_data_file", "missing_target_column", "unknown_model", "unknown_dataset",
    "recipe_unknown_key_and_wrong_type", "corrupt_image", "single_class_target", "unknown_set_key",
    "set_without_value", "evaluate_missing_run",
]


@pytest.mark.parametrize("case", CASES)
def test_user_error(cases: dict, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    args, out, words = cases[case]
    assert_user_error(run_main(args, capsys), out, mentions=words)


def test_user_error_in_a_real_process(cases: dict) -> None:
    # One case end to end in its own process: exit code and stderr exactly as a shell sees them.
    args, out, words = cases["corrupt_image"]
    assert_user_error(run_cli(*args), out, mentions=words)


def test_every_case_is_checked(cases: dict) -> None:
    assert sorted(cases) == sorted(CASES)


def test_recipe_problems_are_reported_together(cases: dict, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main(cases["recipe_unknown_key_and_wrong_type"][0], capsys)
    error = result.stderr.splitlines()[0]
    # both problems, each saying what is wrong, in the one error line
    assert "unknown key" in error
    assert "'many'" in error


def test_unknown_dataset_hint_lists_builtin_names(cases: dict, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main(cases["unknown_dataset"][0], capsys)
    hint = [line for line in result.stderr.splitlines() if line.startswith("hint: ")]
    assert hint and "digits" in hint[0] and "synthetic-classification" in hint[0]


def test_help_exits_zero() -> None:
    top = run_cli("--help").check()
    for verb in ("train", "evaluate"):
        assert verb in top.stdout
    train = run_cli("train", "--help").check()
    for flag in ("--data", "--target", "--model", "--epochs", "--out", "--seed", "--resume", "--set", "--json"):
        assert flag in train.stdout, flag
    evaluate = run_cli("evaluate", "--help").check()
    assert "--data" in evaluate.stdout


def test_console_script_help(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    script = Path(sys.executable).parent / "trainfer"
    exe = str(script) if script.exists() else shutil.which("trainfer")
    assert exe, "the trainfer console script is not installed"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "Traceback" not in proc.stderr
