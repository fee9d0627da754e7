"""Where outputs go (issue 10, points 7, 12, 18): checked before the work, OS errors as one `error:` line
naming the path, nothing half-written, and the umask's permissions on everything written.

Disk-full, read-only and permission failures are simulated (the tests run as root, which bypasses
permissions): the OS call is made to fail with the errno a real disk gives, through the same code path.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from _inference_fixtures import get_run, make_animals
from conftest import assert_user_error, run_main, write_image_folder

from trainfer import _atomic
from trainfer.errors import OutputError

TINY = ["--set", "model.hidden=[8]"]


@pytest.fixture(scope="module")
def csv_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return get_run(tmp_path_factory, "csv").path


@pytest.fixture(scope="module")
def rows_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rows") / "rows.csv"
    make_animals(30, seed=3).to_csv(path, index=False)
    return path


def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every verb's real work fail loudly: a refused output must be refused before it starts."""
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("the work started although the output could not be written")

    monkeypatch.setattr("trainfer.training.train_run", boom)
    monkeypatch.setattr("trainfer.exporting.Run.load", boom)
    monkeypatch.setattr("trainfer.exporting.optimize.Run.load", boom)
    monkeypatch.setattr("trainfer.runtime.predictor.load", boom)


def _verb(verb: str, out: Path, run: Path, bundle: Path, rows: Path) -> list[object]:
    return {
        "train": ["train", "--data", "iris", "--model", "mlp", "--epochs", "1", *TINY, "--out", out],
        "export": ["export", run, "--out", out],
        "optimize": ["optimize", run, "--out", out],
        "predict": ["predict", bundle, rows, "--out", out],
    }[verb]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


VERBS = ["train", "export", "optimize", "predict"]


# ---- checked before the work ------------------------------------------------------------------------------

@pytest.mark.parametrize("verb", VERBS)
def test_an_output_of_the_wrong_kind_is_refused_before_the_work(verb: str, tmp_path: Path, csv_run_dir: Path,
                                                                 csv_bundle: Path, rows_csv: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _no_work(monkeypatch)
    # a file where a directory is written (train/export/optimize), a directory where a file is (predict)
    wrong = tmp_path / ("preds.csv" if verb == "predict" else "afile")
    if verb == "predict":
        wrong.mkdir()
    else:
        wrong.write_text("mine\n")
    line = assert_user_error(run_main(_verb(verb, wrong, csv_run_dir, csv_bundle, rows_csv), capsys),
                             mentions=[str(wrong)])
    assert ("is a directory" if verb == "predict" else "is a file") in line
    # and a file in the way of a directory to create
    inside = tmp_path / "blocker" / "out.csv" if verb == "predict" else tmp_path / "blocker" / "out"
    (tmp_path / "blocker").write_text("x")
    line = assert_user_error(run_main(_verb(verb, inside, csv_run_dir, csv_bundle, rows_csv), capsys))
    assert "blocker" in line and "not a directory" in line
    assert _leftovers(tmp_path) == sorted(["blocker", wrong.name])


@pytest.mark.parametrize("problem", ["read-only", "permission", "disk-full"])
@pytest.mark.parametrize("verb", VERBS)
def test_an_unwritable_place_is_refused_before_the_work(verb: str, problem: str, tmp_path: Path, csv_run_dir: Path,
                                                        csv_bundle: Path, rows_csv: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _no_work(monkeypatch)
    place = tmp_path / "place"
    place.mkdir()
    real_access, real_statvfs = os.access, os.statvfs

    def access(path: object, mode: int, **kw: object) -> bool:
        if Path(str(path)) == place and problem != "disk-full" and mode & os.W_OK:
            return False  # what a non-root user sees on a 0500 directory, or anyone on a read-only mount
        return real_access(path, mode, **kw)

    def statvfs(path: object) -> os.statvfs_result:
        st = real_statvfs(path)
        if Path(str(path)) != place:
            return st
        fields = list(st)
        if problem == "read-only":
            fields[8] |= os.ST_RDONLY  # f_flag
        if problem == "disk-full":
            fields[3] = fields[4] = 0  # f_bfree, f_bavail
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "statvfs", statvfs)
    out = place / "deeper" / ("p.csv" if verb == "predict" else "out")
    line = assert_user_error(run_main(_verb(verb, out, csv_run_dir, csv_bundle, rows_csv), capsys),
                             mentions=[str(out)])
    assert {"read-only": "read-only", "permission": "permission denied", "disk-full": "no space left"}[problem] in line
    assert _leftovers(place) == []


def test_predict_refuses_an_existing_file_without_force(csv_bundle: Path, rows_csv: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.csv"
    out.write_text("keep me\n")
    line = assert_user_error(run_main(["predict", csv_bundle, rows_csv, "--out", out], capsys))
    assert str(out) in line and "already exists" in line
    assert out.read_text() == "keep me\n"
    run_main(["predict", csv_bundle, rows_csv, "--out", out, "--force"], capsys).check()
    assert out.read_text().startswith("id,prediction,")


# ---- OS errors while writing -------------------------------------------------------------------------------

_ERRNO = {"disk-full": (errno.ENOSPC, "no space left"), "read-only": (errno.EROFS, "read-only"),
          "permission": (errno.EACCES, "permission denied")}


@pytest.mark.parametrize("problem", list(_ERRNO))
def test_predict_write_error_names_the_path_and_leaves_nothing(problem: str, csv_bundle: Path, rows_csv: Path,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    code, words = _ERRNO[problem]
    real_writer = csv.writer

    class Failing:  # the disk gives out after a few rows
        def __init__(self, fh: object) -> None:
            self.inner, self.rows = real_writer(fh), 0

        def writerow(self, row: list[object]) -> None:
            self.rows += 1
            if self.rows > 3:
                raise OSError(code, os.strerror(code))
            self.inner.writerow(row)

    monkeypatch.setattr(csv, "writer", Failing)
    out = tmp_path / "p.csv"
    line = assert_user_error(run_main(["predict", csv_bundle, rows_csv, "--out", out, "--chunk-size", "2"], capsys),
                             mentions=[str(out), words])
    assert "Errno" not in line
    assert _leftovers(tmp_path) == [], "no temporary or partial file is left"


def _safetensors_disk_full(after: int):
    """safetensors' save_file failing as it does on a full disk (its own error type wrapping errno 28)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    calls = {"n": 0}

    def save(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        save_file(*args, **kwargs)

    return save


def test_train_disk_full_at_the_first_checkpoint_leaves_no_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("trainfer.training.checkpoint.save_file", _safetensors_disk_full(after=0))
    out = tmp_path / "run"
    line = assert_user_error(run_main(["train", "--data", "iris", "--model", "mlp", "--epochs", "2", *TINY,
                                       "--out", out], capsys), out=out, mentions=["no space left", str(out)])
    assert "SafetensorError" not in line


def test_train_disk_full_later_keeps_the_checkpoint_and_says_how_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("trainfer.training.checkpoint.save_file", _safetensors_disk_full(after=1))
    out = tmp_path / "run"
    result = run_main(["train", "--data", "iris", "--model", "mlp", "--epochs", "3", *TINY, "--out", out], capsys)
    assert_user_error(result, mentions=["no space left"])
    assert "--resume" in result.stderr and "epoch 1" in result.stderr
    assert (out / "checkpoints" / "state.json").is_file()
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")], "no partial file"
    monkeypatch.undo()
    resumed = run_main(["train", "--out", out, "--resume", "--json"], capsys).check()
    assert resumed.json()["epochs_run"] == 3


def test_export_disk_full_is_not_called_a_tracing_failure(csv_run_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    def full(*_a: object, **_k: object) -> None:  # both exporters write the graph with torch.onnx.export
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full)
    out = tmp_path / "bundle"
    result = run_main(["export", csv_run_dir, "--out", out], capsys)
    line = assert_user_error(result, mentions=["no space left", str(out)])
    assert "traceable" not in result.stderr and "export failed" not in line
    assert _leftovers(tmp_path) == [], "the temporary bundle directory is removed"


def test_an_os_error_escaping_a_verb_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def fail(*_a: object, **_k: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x.csv"))

    monkeypatch.setattr("trainfer.runtime.files.predict", fail)
    line = assert_user_error(run_main(["predict", "b", "i.csv", "--out", tmp_path / "p.csv"], capsys))
    assert str(tmp_path / "x.csv") in line and "Permission denied" in line


def test_write_with_maps_wrapped_os_errors_and_cleans_up(tmp_path: Path) -> None:
    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("library failed: I/O error: Read-only file system (os error 30)")

    with pytest.raises(OutputError, match="read-only") as info:
        _atomic.write_with(tmp_path / "f.bin", writer)
    assert str(tmp_path / "f.bin") in info.value.message and info.value.hint
    with pytest.raises(RuntimeError, match="unrelated"):  # not an OS error: left as it is
        _atomic.write_with(tmp_path / "g.bin", lambda tmp: (_ for _ in ()).throw(RuntimeError("unrelated")))
    assert _leftovers(tmp_path) == []


# ---- messages that point at the right thing (point 12) ----------------------------------------------------

def test_export_of_a_file_says_it_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    line = assert_user_error(run_main(["export", f, "--out", tmp_path / "b"], capsys), mentions=[str(f)])
    assert "is a file" in line and "not found" not in line


@pytest.mark.parametrize("verb", ["predict", "serve"])
def test_a_run_given_where_a_bundle_goes_says_export_first(verb: str, csv_run_dir: Path, rows_csv: Path,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["predict", csv_run_dir, rows_csv, "--out", tmp_path / "p.csv"] if verb == "predict" else \
        ["serve", csv_run_dir, "--port", "1"]
    result = run_main(args, capsys)
    line = assert_user_error(result, mentions=[str(csv_run_dir)])
    assert "training run" in line
    assert f"trainfer export {csv_run_dir} --out" in result.stderr


def test_the_output_of_trainfer_run_points_at_its_bundle(csv_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from trainfer.errors import BundleError
    from trainfer.runtime import load

    shutil.copytree(csv_bundle, tmp_path / "out" / "run" / "bundle")
    with pytest.raises(BundleError) as info:
        load(tmp_path / "out")
    assert str(tmp_path / "out" / "run" / "bundle") in info.value.message


def test_images_given_to_a_table_bundle_and_a_table_to_an_image_bundle(csv_bundle: Path, cnn_bundle: Path,
                                                                      rows_csv: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    images = write_image_folder(tmp_path / "imgs", per_class=1)
    line = assert_user_error(run_main(["predict", csv_bundle, images, "--out", tmp_path / "a.csv"], capsys))
    assert "takes a table with columns [x1, colour, x2]" in line and "folder of images" in line
    assert "shape" not in line
    line = assert_user_error(run_main(["predict", cnn_bundle, rows_csv, "--out", tmp_path / "b.csv"], capsys))
    assert "takes images" in line and "table" in line
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "b.csv").exists()


# ---- permissions follow the umask (point 18) ---------------------------------------------------------------

def _modes(root: Path) -> dict[str, int]:
    found = {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode)
             for p in (root.rglob("*") if root.is_dir() else [])}
    found[root.name] = stat.S_IMODE(root.stat().st_mode)
    return found


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_everything_written_follows_the_umask(mask: int, tmp_path: Path, rows_csv: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(mask)
    try:
        csv_path = tmp_path / "data.csv"
        make_animals(60).to_csv(csv_path, index=False)
        run, bundle, preds = tmp_path / "run", tmp_path / "bundle", tmp_path / "p.csv"
        run_main(["train", "--data", csv_path, "--target", "label", "--model", "mlp", "--epochs", "1", *TINY,
                  "--out", run], capsys).check()
        run_main(["export", run, "--out", bundle], capsys).check()
        run_main(["predict", bundle, rows_csv, "--out", preds], capsys).check()
        _atomic.write_text(tmp_path / "report" / "report.html", "<html></html>")  # how the report is written
    finally:
        os.umask(old)
    want = {"file": 0o666 & ~mask, "dir": 0o777 & ~mask}
    for root in (run, bundle, preds, tmp_path / "report"):
        for name, mode in _modes(root).items():
            kind = "dir" if (root.parent / name).is_dir() else "file"
            assert mode == want[kind], f"{name}: {oct(mode)}, want {oct(want[kind])} under umask {oct(mask)}"


def test_an_os_error_elsewhere_names_that_file_too(tmp_path: Path) -> None:
    def writer(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/scratch-of-a-library")

    with pytest.raises(OutputError) as info:
        _atomic.write_with(tmp_path / "f.bin", writer)
    assert info.value.message == (f"cannot write /tmp/scratch-of-a-library (while writing {tmp_path / 'f.bin'}): "
                                  "no space left on device")


def test_resume_into_a_folder_that_holds_no_run_is_refused_and_touches_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Cleaning up after a failed write must never treat a user's folder as a run directory.
    folder = tmp_path / "thesis"
    (folder / "data").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\documentclass{article}")
    (folder / "data" / "x.csv").write_text("a,b\n1,2\n")
    result = run_main(["train", "--data", "iris", "--epochs", "1", "--out", folder, "--resume"], capsys)
    assert_user_error(result, mentions=["--resume", "no run"])
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["data", "data/x.csv", "thesis.tex"]


def test_optimize_with_its_scratch_space_full_names_the_disk_not_the_baseline(
        csv_run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    def full(*_a: object, **_k: object) -> None:  # optimize exports its variants into a scratch directory
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/trainfer-optimize-x/onnx-fp32.onnx")

    monkeypatch.setattr(torch.onnx, "export", full)
    result = run_main(["optimize", csv_run_dir, "--out", tmp_path / "b", "--variant", "int8-dynamic"], capsys)
    line = assert_user_error(result, mentions=["no space left"])
    assert "baseline could not be built" not in line and "Errno" not in line, line
    assert not (tmp_path / "b").exists()
