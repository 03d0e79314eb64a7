"""What a user can get wrong, or what the machine can refuse, ends in one clear line and an exit
code, never a traceback, and nothing is created before the arguments are valid."""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

import ewc._atomic
from ewc.cli import main, parse_seeds
from ewc.experiment.storage import checkpoint
from ewc.experiment.storage.checkpoint import load_checkpoint

TINY = [
    "benchmark.num_tasks=2",
    "benchmark.train_samples=128",
    "benchmark.test_samples=50",
    "training.epochs=1",
    "training.batch_size=32",
    "training.eval_every=0",
    "training.threads=1",
    "checkpoint_every=2",
    "model.hidden=[16]",
]


def run(out: Path, *arguments: str) -> int:
    return main(["run", "--no-report", "--out", str(out), *arguments, *TINY])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run, shared by the tests that only read it or resume it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run(out, "--strategies", "ewc") == 0
    return out


def one_line_error(capsys) -> str:
    """The one line of the error on stderr (progress lines may precede it); no traceback."""
    printed = capsys.readouterr().err
    assert "Traceback" not in printed
    (error,) = [line for line in printed.splitlines() if line.startswith("ewc ")]
    return error


@pytest.mark.parametrize(
    ("text", "seeds"),
    [("0,1,2", [0, 1, 2]), ("0-4", [0, 1, 2, 3, 4]), ("0-2,7", [0, 1, 2, 7]), (" 3 ", [3])],
)
def test_seeds_take_lists_and_ranges(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["a,b", "", "1,,2", "4-2", "-1", "1.5", "0-"])
def test_bad_seeds_say_what_is_accepted(tmp_path, capsys, text):
    with pytest.raises(argparse.ArgumentTypeError, match=r"e\.g\. 0,1,2 or 0-4 or 0-2,7"):
        parse_seeds(text)
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path / "r", "--seeds", text)
    assert exit_info.value.code == 2
    assert "argument --seeds: takes non-negative integers and rising ranges" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--jobs", "0"], "argument --jobs: must be a positive integer; got '0'"),
        (["--jobs", "two"], "argument --jobs: must be a positive integer; got 'two'"),
    ],
)
def test_bad_options_create_nothing(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        run(tmp_path / "r", *arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["strategies.ewc.strength=-1"],
            "ewc run: strategies.ewc.strength must be a finite number ≥ 0; got -1",
        ),
        (["benchmark.scenario=tasks"], "benchmark.scenario = 'tasks' is not one of 'task'"),
        (["--device", "tpu"], "training.device = 'tpu' is not one of 'auto', 'cpu', 'cuda'"),
        (
            ["benchmark.name=split", "benchmark.scenario=domain", "benchmark.multi_head=true"],
            "benchmark.multi_head = true needs benchmark.scenario = 'task'",
        ),
    ],
)
def test_config_errors_name_the_full_key_and_create_nothing(tmp_path, capsys, arguments, message):
    assert run(tmp_path / "r", "--strategies", "ewc", *arguments) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused_and_auto_means_cpu(tmp_path, capsys):
    assert run(tmp_path / "r", "--device", "cuda") == 2
    assert "training.device = 'cuda', but this machine has 0 usable CUDA device(s)" in (
        one_line_error(capsys)
    )
    assert not (tmp_path / "r").exists()
    assert run(tmp_path / "r", "--device", "auto", "--strategies", "finetune", "--quiet") == 0
    recorded = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert recorded["training"]["device"] == "cpu"
    assert capsys.readouterr().err == ""  # --quiet: no progress


def test_quiet_prints_no_progress_but_the_results(finished, capsys):
    assert main(["run", "--resume", str(finished), "--no-report", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    assert "run directory" in printed.out


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EROFS, "Read-only file system (choose a place on a writable file system)"),
        (errno.EACCES, "Permission denied (check its permissions or choose another place)"),
        (errno.ENOSPC, "No space left on device (free some space)"),
        (errno.ENOENT, "No such file or directory (check the path)"),
    ],
)
def test_an_unwritable_out_is_one_line(tmp_path, capsys, monkeypatch, code, words):
    out = tmp_path / "run"
    real_mkdir = Path.mkdir

    def refused(self, *args, **kwargs):
        if self == out:
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    assert run(out) == 1
    assert one_line_error(capsys) == f"ewc run: {out}: {words}"


def test_a_read_only_resume_is_one_line(finished, capsys, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and str(path).startswith(str(finished)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(ewc._atomic.os, "open", read_only)
    assert main(["run", "--resume", str(finished), "--no-report"]) == 1
    error = one_line_error(capsys)  # the first file a resume writes: the directory's lock
    assert error.startswith(f"ewc run: {finished / '.lock'}: Read-only")


def test_an_unreadable_config_file_is_named(tmp_path, capsys, monkeypatch):
    config = tmp_path / "my.toml"
    config.write_text("seeds = [0]\n")
    real_read_text = Path.read_text

    def denied(self, *args, **kwargs):
        if self == config:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    assert run(tmp_path / "r", "--config", str(config)) == 2
    assert f"config file {config} cannot be read: Permission denied" in one_line_error(capsys)


def test_an_unwritable_cache_is_one_line(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    real_mkdir = Path.mkdir

    def refused(self, *args, **kwargs):
        if str(self).startswith(str(cache)):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    # a mirror that delivers a verified file, so that the download reaches the cache folder
    downloader = importlib.import_module("ewc.data.download")
    monkeypatch.setattr(downloader, "_download_verified", lambda *args: b"verified")
    assert (
        main(["download", "mnist", "--cache-dir", str(cache), "--mirror", "http://0.0.0.0:9"]) == 1
    )
    error = one_line_error(capsys)
    assert error.startswith("ewc download: ")
    assert "Permission denied" in error


def without(monkeypatch, dependency: str, *importers: str) -> None:
    """Make ``dependency`` look uninstalled, and forget the modules that imported it."""
    for name in list(sys.modules):
        if name == dependency or name.startswith(f"{dependency}.") or name in importers:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, dependency, None)


def test_a_missing_safetensors_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    without(
        monkeypatch,
        "safetensors",
        "ewc.experiment.runner",
        "ewc.experiment.cell",
        "ewc.experiment.storage.checkpoint",
    )
    assert run(tmp_path / "r") == 1
    assert one_line_error(capsys) == (
        "ewc run: needs safetensors, which is not installed; "
        "install it with `pip install 'ewc[run]'`"
    )
    assert not (tmp_path / "r").exists()


def test_a_missing_matplotlib_says_how_to_install_it(finished, capsys, monkeypatch):
    without(monkeypatch, "matplotlib")
    assert main(["report", str(finished)]) == 1
    assert one_line_error(capsys) == (
        "ewc report: needs matplotlib, which is not installed; "
        "install it with `pip install 'ewc[run]'`"
    )


def test_an_interrupt_while_loading_data_exits_130_and_creates_nothing(
    tmp_path, capsys, monkeypatch
):
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr("ewc.experiment.runner.load_data", interrupted)
    assert run(tmp_path / "r") == 130
    assert capsys.readouterr().err.strip() == "ewc run: interrupted"
    assert not (tmp_path / "r").exists()


def test_an_interrupted_download_exits_130(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ewc.data.download", interrupted)
    assert main(["download", "mnist", "--cache-dir", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "ewc download: interrupted"


def final_state(run_dir: Path) -> tuple[dict, dict]:
    """The accuracy matrices and the last checkpoint's parameters of every cell."""
    matrices = {p.name: p.read_text() for p in sorted((run_dir / "accuracy").glob("*.csv"))}
    params = {}
    for cell in sorted((run_dir / "cells").iterdir()):
        newest = sorted((cell / "checkpoints").glob("*.safetensors"))[-1]
        params[cell.name] = load_checkpoint(newest)["model"]
    return matrices, params


class _FullDisk:
    """A file that takes half of what is written to it, then reports a full disk."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        self._file.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one_and_resume_is_bitwise(
    tmp_path, capsys, monkeypatch
):
    reference, cut = tmp_path / "whole", tmp_path / "cut"
    assert run(reference, "--strategies", "ewc") == 0
    real_write, real_fdopen, calls = checkpoint.write_bytes_atomic, os.fdopen, []

    def disk_full_on_the_third(path, data):
        calls.append(path)
        if len(calls) != 3:
            return real_write(path, data)
        with monkeypatch.context() as patch:
            patch.setattr(ewc._atomic.os, "fdopen", lambda *a: _FullDisk(real_fdopen(*a)))
            return real_write(path, data)

    monkeypatch.setattr(checkpoint, "write_bytes_atomic", disk_full_on_the_third)
    assert run(cut, "--strategies", "ewc") == 1
    error = one_line_error(capsys)
    assert error.startswith(f"ewc run: {calls[2]}: No space left on device (free some space)")
    assert error.endswith(f"; continue with `ewc run --resume {cut}`")
    folder = calls[2].parent
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in calls[:2]]  # no temp file
    for kept in calls[:2]:
        load_checkpoint(kept)  # intact: the digest still matches
    monkeypatch.setattr(checkpoint, "write_bytes_atomic", real_write)  # space is back
    assert main(["run", "--resume", str(cut), "--no-report"]) == 0
    (ref_matrices, ref_params), (cut_matrices, cut_params) = (
        final_state(reference),
        final_state(cut),
    )
    assert cut_matrices == ref_matrices
    for cell, params in ref_params.items():
        assert all(torch.equal(params[name], cut_params[cell][name]) for name in params), cell


def test_a_run_recorded_before_training_device_existed_still_resumes(finished):
    path = finished / "config.json"
    record = json.loads(path.read_text())
    del record["config"]["training"]["device"]  # what config.json held before the key existed
    path.write_text(json.dumps(record))
    assert main(["run", "--resume", str(finished), "--no-report", "--quiet"]) == 0


def test_run_experiment_checks_jobs_before_it_creates_anything(tmp_path):
    from ewc.experiment.config import resolve
    from ewc.experiment.runner import run_experiment

    with pytest.raises(ValueError, match="jobs must be a positive integer; got 0"):
        run_experiment(resolve(overrides=TINY), tmp_path / "r", jobs=0)
    assert not (tmp_path / "r").exists()
