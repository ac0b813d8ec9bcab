"""The CLI: every command has help; bad input is one line on stderr and a non-zero exit."""

import os
import subprocess
import sys

import pytest

COMMANDS = ["datasets", "strategies", "pretrain", "transfer", "shift", "evaluate", "predict", "demo", "rank", "explain",
            "export", "serve", "experiment", "report", "federated"]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "medtransfer.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200"})


def test_every_command_has_help_with_an_example():
    """In process (typer's runner): a subprocess per command costs seconds each; every registered command."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from medtransfer.cli import app

    names = sorted(get_command(app).commands)
    assert set(COMMANDS) <= set(names)
    for command in names:
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "Example" in result.output, command


@pytest.mark.parametrize("args, message", [
    (["transfer", "--data", "heart:va", "--strategy", "magic"], "unknown strategy"),
    (["transfer", "--data", "csv:missing.csv", "--target", "y", "--strategy", "scratch"], "not found"),
    (["transfer", "--data", "heart:va", "--budget", "-4", "--strategy", "scratch"], "bad budget"),
    (["evaluate", "no-such-run"], "not a medtransfer run"),
    (["transfer", "--data", "nonsense", "--strategy", "scratch"], "bad dataset"),
    (["transfer", "--data", "heart:va", "--source", "heart:cleveland", "--strategy", "full", "--budget", "0"],
     "needs labelled target examples"),
    (["transfer", "--data", "heart:va", "--strategy", "dann", "--budget", "0"], "needs --source to be a source dataset"),
    (["shift", "--source", "heart:cleveland", "--target", "heart:mars"], "unknown heart site"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(args, message, tmp_path):
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = cli("transfer", "--data", "heart:va", "--strategy", "magic", "--debug", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_transfer_then_evaluate_and_predict(tmp_path):
    run = tmp_path / "run"
    result = cli("transfer", "--data", "heart:hungary", "--source", "heart:cleveland", "--strategy", "lp-ft",
                 "--budget", "20", "--out", str(run), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "auc" in result.stdout and (run / "metrics.json").is_file()
    again = cli("transfer", "--data", "heart:hungary", "--strategy", "target-only", "--budget", "20",
                "--out", str(run), cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    evaluated = cli("evaluate", str(run), "--data", "heart:va", cwd=tmp_path)
    assert evaluated.returncode == 0 and "sensitivity" in evaluated.stdout
    predicted = cli("predict", str(run), "heart:switzerland", "--out", str(tmp_path / "p.csv"), cwd=tmp_path)
    assert predicted.returncode == 0 and (tmp_path / "p.csv").is_file()


def test_strategies_lists_the_label_free_methods():
    result = cli("strategies")
    assert result.returncode == 0
    for name in ("dann", "coral", "mmd", "prior-shift", "source-model"):
        assert name in result.stdout


def test_shift_writes_a_report(tmp_path):
    result = cli("shift", "--source", "heart:cleveland", "--target", "heart:va", "--out", str(tmp_path / "va"),
                 "--permutations", "100", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "domain classifier AUC" in result.stdout and "strong covariate shift" in result.stdout
    assert (tmp_path / "va" / "shift.md").is_file() and (tmp_path / "va" / "shift.json").is_file()


def test_version_prints_the_package_version():
    from medtransfer import __version__

    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"medtransfer {__version__}"


def started(process: subprocess.Popen, children: int = 0, timeout: float = 120) -> None:
    """Wait until the CLI is at work: torch loaded in it (and in `children` worker processes), then a moment."""
    import time

    def busy(pid: int) -> bool:
        try:
            return "libtorch" in open(f"/proc/{pid}/maps").read()
        except OSError:
            return False

    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        if busy(process.pid) and sum(busy(int(w)) for w in workers) >= children:
            break
        time.sleep(0.2)
    time.sleep(3)
    assert process.poll() is None, f"the command ended before the interrupt: {process.communicate()}"


# scratch trains a network for the epochs given; target-only (a logistic regression) ended within seconds,
# so Ctrl-C sometimes came as the grid finished and exited 0 (seen in CI).
LONG_GRID = ("name: long\ntargets: [heart:hungary]\nstrategies: [scratch]\nbudgets: [all]\nseeds: 4\n"
             "train: {epochs: 100000, patience: 100000}\nn_boot: 10\n")


@pytest.mark.parametrize("args, children", [
    (["transfer", "--data", "heart:hungary", "--source", "heart:cleveland", "--strategy", "full",
      "--epochs", "100000", "--patience", "100000", "--out", "run"], 0),
    (["experiment", "grid.yaml", "--out", "exp"], 0),
    (["experiment", "grid.yaml", "--out", "exp", "--jobs", "2"], 2),
], ids=["transfer", "experiment", "experiment-2-jobs"])
def test_ctrl_c_prints_one_line_and_exits_130(args, children, tmp_path):
    """Ctrl-C reaches the whole foreground process group (workers too); before the fix it exited 0 silently."""
    import signal

    (tmp_path / "grid.yaml").write_text(LONG_GRID)
    # As a terminal starts a foreground command: Ctrl-C not ignored (a shell's background job, e.g. CI
    # started with `&`, passes SIGINT on as ignored, and then nothing could interrupt the command).
    process = subprocess.Popen([sys.executable, "-m", "medtransfer.cli", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                               env={**os.environ, "COLUMNS": "200"})
    try:
        started(process, children)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert stderr.splitlines() == ["interrupted"], stderr
    assert not (tmp_path / "run").exists()  # an interrupted run leaves no run folder behind
