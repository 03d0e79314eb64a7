"""`ewc sweep` from the command line: errors, and real workers sharing one study.

Two worker processes run one grid on the default journal file, and on a real PostgreSQL server
this session starts on 127.0.0.1 (a throwaway cluster in a temporary folder, stopped at the
end; skipped when PostgreSQL is not installed: .ci/run installs Debian's postgresql).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ewc.cli import main
from sweep_helpers import EWC, TINY

GRID = ["--search", "strategies.ewc.strength=log:1..1e3:4", "--no-prune", "--no-report"]


def test_without_optuna_it_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now fails
    assert main(["sweep", *GRID, *TINY]) == 1
    err = capsys.readouterr().err
    assert err == (
        "ewc sweep: needs optuna, which is not installed; "
        "install it with `pip install 'ewc[sweep]'`\n"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--search", "strategies.ewc.strength=log:1..1e3", *TINY], "needs a number of points"),
        (["--search", "strategies.ewc.strength=1", *TINY], "two or more"),
        (["--search", "strategies.ewc.fisher=exact,fishy", *TINY], "strategies.ewc.fisher"),
        (["--resume", "nowhere", "--seeds", "0"], "--resume takes the recorded sweep"),
        (["--resume", "nowhere", "--objective", "forgetting"], "--resume takes the recorded sweep"),
        (["--resume", "nowhere", "--sampler-seed", "7"], "--resume takes the recorded sweep"),
        (["--resume", "nowhere"], "is not a sweep directory"),
        (["--search", "training.lr=0.1,0.2", "--storage", "sqlite://"], "name the study"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(arguments, message, tmp_path, monkeypatch, capsys):
    pytest.importorskip("optuna")
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "runs").exists()  # nothing was created


def _workers(out_dirs: list[Path], extra: list[str]) -> list[subprocess.CompletedProcess]:
    """Start one `ewc sweep` worker per directory at once; wait for all."""
    command = [*EWC, "sweep", *GRID, *extra, *TINY]
    workers = [
        subprocess.Popen(
            [*command, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for out in out_dirs
    ]
    results = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(worker.args, worker.returncode, stdout, stderr))
    return results


def _check_every_point_ran_once(results, out_dirs):
    for result in results:
        assert result.returncode == 0, result.stderr
    trials = [json.loads((d / "trials.json").read_text())["trials"] for d in out_dirs]
    # the worker that finished last saw every trial complete
    final = max(trials, key=lambda ts: sum(t["state"] == "complete" for t in ts))
    assert sorted(t["params"]["strategies.ewc.strength"] for t in final) == [1, 10, 100, 1000]
    assert {t["state"] for t in final} == {"complete"}
    ran = [line for r in results for line in r.stdout.splitlines() if line.startswith("trial ")]
    assert len(ran) == 4  # four trials in all, none twice
    run_dirs = [Path(t["run_dir"]) for t in final]
    assert len(set(run_dirs)) == 4
    assert all((d / "summary.json").is_file() for d in run_dirs)
    return ran


def test_two_workers_share_a_grid_on_the_journal_file(tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "sweep"
    results = _workers([out, out], [])
    _check_every_point_ran_once(results, [out])


def _pg_program(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) or not found else found[-1]


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (run as ``postgres`` when the tests are root)."""
    initdb, pg_ctl = _pg_program("initdb"), _pg_program("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (no initdb); .ci/run installs Debian's postgresql")
    pytest.importorskip("psycopg2", reason="psycopg2 (PostgreSQL's driver) is not installed")
    pytest.importorskip("optuna")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="ewc-postgres-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True)  # fmt: skip
    start = ["-D", str(data), "-l", str(folder / "log"), "-w", "-t", "60", "-o", options, "start"]
    subprocess.run([*as_user, pg_ctl, *start], check=True, capture_output=True)
    try:
        # the driver named: SQLAlchemy 2.1 reads a bare postgresql:// with psycopg 3
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_machines_share_a_grid_on_postgresql(postgres_url, tmp_path):
    import optuna

    dirs = [tmp_path / "machine-a", tmp_path / "machine-b"]  # two sweep directories, one study
    results = _workers(dirs, ["--storage", postgres_url, "--study", "tiny-grid"])
    _check_every_point_ran_once(results, dirs)
    study = optuna.load_study(study_name="tiny-grid", storage=postgres_url)
    assert len(study.trials) == 4
    assert sorted(t.params["strategies.ewc.strength"] for t in study.trials) == [1, 10, 100, 1000]
    recorded = json.loads((dirs[0] / "sweep.json").read_text())
    assert recorded["storage"] == postgres_url  # no password in it, so it is recorded


def test_resume_continues_the_recorded_study_only(tmp_path, capsys):
    pytest.importorskip("optuna")
    out = tmp_path / "sweep"
    assert main(["sweep", *GRID, *TINY, "--out", str(out), "--no-report", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sweep", "--resume", str(out), "--study", "other", "--no-report"]) == 2
    assert "--resume continues the recorded study" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(out), "--storage", "sqlite:///x.db"]) == 2
    assert "records another storage (its own journal file)" in capsys.readouterr().err
