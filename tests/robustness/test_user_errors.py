"""One line and exit 2 for every failure a user can cause, naming the file and the problem: every
run-reading command against each damaged run artifact, unknown device names, tuner settings out
of range; and behind them the one guard (selfmm.cli.main) that turns anything unexpected into
one line with a pointer to `--debug`, on every command.

Label files that are binary or not UTF-8 are in test_strict_inputs.py; an output path that is
a folder, or a name too long, in test_outputs.py.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from selfmm.cli import main
from selfmm.cli.outputs import OUTPUTS, READ_ONLY

from .helpers import copy_run, train_argv


def outcome(capsys, args: list[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("selfmm: error:")]
    assert len(errors) == (code != 0), err
    return code, errors[0] if errors else ""


# --- damaged run artifacts -------------------------------------------------------------------

# Each damage of a run's files, and the commands that read that file (and so must refuse the
# run with one line naming it); the others must still succeed.
DAMAGES = [
    ("seed-7/config.json", "truncated", {"evaluate", "labels", "report", "predict", "serve"}),
    ("seed-7/config.json", "a list", {"evaluate", "labels", "report", "predict", "serve"}),
    ("seed-7/config.json", "an empty object", {"evaluate", "labels", "report", "predict", "serve"}),
    ("seed-7/config.json", "nested 100000 deep", {"evaluate", "labels", "report", "predict", "serve"}),
    ("seed-7/config.json", "missing", {"evaluate", "labels", "report", "predict", "serve"}),
    ("results.json", "truncated", {"evaluate", "report", "export-mmsa", "predict", "serve"}),
    ("results.json", "an empty object", {"evaluate", "report", "export-mmsa", "predict", "serve"}),
    ("results.json", "missing", {"export-mmsa"}),
    ("seed-7/metrics.json", "truncated", {"evaluate", "report"}),
    ("seed-7/metrics.json", "a list", {"evaluate", "report"}),
    ("seed-7/history.json", "truncated", {"report"}),
    ("seed-7/history.json", "an empty object", {"report"}),
    ("seed-7/ulabels.npz", "truncated", {"labels", "report"}),
    ("seed-7/ulabels.npz", "missing", {"labels"}),
    ("seed-7/best.safetensors", "truncated", {"evaluate", "predict", "serve"}),
    ("seed-7/best.safetensors", "missing", {"evaluate", "predict", "serve"}),
    ("seed-7/test_predictions.csv", "binary", {"report"}),
    ("seed-7/encoder/config.json", "truncated", {"evaluate", "predict", "serve"}),
]
RUN_READERS = ["evaluate", "labels", "report", "export-mmsa", "predict", "serve"]


def damage(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "binary":
        path.write_bytes(bytes(range(256)))
    else:
        path.write_text({"a list": "[1, 2]", "an empty object": "{}",
                         "nested 100000 deep": "[" * 100_000 + "]" * 100_000}[how])


def reader_args(command: str, run: Path, data: Path, tmp_path: Path) -> list[str]:
    return {
        "evaluate": ["evaluate", "--run", str(run), "--data", str(data), "--device", "cpu"],
        "labels": ["labels", str(run), "--out", str(tmp_path / "labels")],
        "report": ["report", str(run), "--out", str(tmp_path / "report.html")],
        "export-mmsa": ["export-mmsa", str(run), "--out", str(tmp_path / "mosi.csv")],
        "predict": ["predict", str(data), "--run", str(run), "--device", "cpu"],
        # Only run where it must refuse: with a readable run it would serve until stopped.
        "serve": ["serve", "--run", str(run), "--port", "0", "--device", "cpu", "--workers", "1"],
    }[command]


@pytest.mark.parametrize("name, how, readers", DAMAGES, ids=[f"{n} {h}" for n, h, _ in DAMAGES])
def test_every_run_reader_against_a_damaged_artifact(name, how, readers, tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run", checkpoints=False)
    damage(run / name, how)
    for command in RUN_READERS:
        if command == "serve" and command not in readers:
            continue
        code, line = outcome(capsys, reader_args(command, run, tiny_run["data"], tmp_path))
        if command in readers:
            named = str(run / name) if how != "missing" or name != "seed-7/config.json" else str(run)
            assert code == 2 and named in line, (command, line)
        else:
            assert code == 0, (command, line)


# --- devices -------------------------------------------------------------------------------


def device_args(command: str, device: str, tiny_run, tmp_path: Path) -> list[str]:
    run, data, bert = tiny_run["run"], tiny_run["data"], tiny_run["bert"]
    training = train_argv(data, tmp_path / "out", bert, "--device", device, command=command)
    return {
        "train": training,
        "ablate": training,
        "tune": ["tune", "--dataset", "mosi", "--data", str(data), "--out", str(tmp_path / "out"), "--text-model",
                 str(bert), "--device", device],
        "reproduce": ["reproduce", "--dataset", "mosi", "--data", str(data), "--out", str(tmp_path / "out"),
                      "--text-model", str(bert), "--seeds", "7", "--device", device],
        "evaluate": ["evaluate", "--run", str(run), "--data", str(data), "--device", device],
        "predict": ["predict", str(data), "--run", str(run), "--device", device],
        "serve": ["serve", "--run", str(run), "--port", "0", "--device", device],
    }[command]


@pytest.mark.parametrize("device", ["gpu", "meta", "mps", "cpu:1", "cuda:99"])
@pytest.mark.parametrize("command", ["train", "ablate", "tune", "reproduce", "evaluate", "predict", "serve"])
def test_unknown_devices_are_one_line(command, device, tiny_run, tmp_path, capsys):
    code, line = outcome(capsys, device_args(command, device, tiny_run, tmp_path))
    assert code == 2 and f"device {device}" in line.replace("'", ""), line
    assert not (tmp_path / "out").exists()


# --- the tuner's own settings --------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "--trials: expected an integer in [1, 10000], got 0"),
    (["--trials", "-5"], "--trials: expected an integer in [1, 10000], got -5"),
    (["--trials", "100000"], "--trials: expected an integer in [1, 10000], got 100000"),
    (["--prune-after", "-1"], "--prune-after: expected an integer in [0, 10000], got -1"),
    (["--prune-warmup", "-2"], "--prune-warmup: expected an integer in [0, 10000], got -2"),
    (["--sampler-seed", "-1"], "--sampler-seed: -1 is not an integer in [0, 2^32)"),
    (["--seed", str(2**32)], "--seed: 4294967296 is not an integer in [0, 2^32)"),
])
def test_tuner_settings_out_of_range_before_any_data(args, message, tmp_path, capsys):
    code, line = outcome(capsys, ["tune", "--dataset", "mosi", "--data", str(tmp_path / "absent.pkl"),
                                  "--out", str(tmp_path / "out"), *args])
    assert code == 2 and message in line, line
    assert not (tmp_path / "out").exists()


# --- the guard -----------------------------------------------------------------------------


def minimal_args(command: str, tmp_path: Path) -> list[str]:
    """Arguments the parser accepts for `command`; nothing is read before the guard is hit."""
    run, data, out = str(tmp_path / "run"), str(tmp_path / "d.pkl"), str(tmp_path / "out")
    return {
        "train": ["train", "--dataset", "mosi", "--data", data, "--out", out],
        "reproduce": ["reproduce", "--dataset", "mosi", "--data", data, "--out", out],
        "ablate": ["ablate", "--dataset", "mosi", "--data", data, "--out", out],
        "tune": ["tune", "--dataset", "mosi", "--data", data, "--out", out],
        "evaluate": ["evaluate", "--run", run, "--data", data],
        "import-mmsa": ["import-mmsa", data, "--dataset", "mosi", "--out", out],
        "export-mmsa": ["export-mmsa", run, "--out", out],
        "synth": ["synth", "--profile", "mosi", "--out", out],
        "inspect": ["inspect", data],
        "cache": ["cache", data],
        "labels": ["labels", run],
        "report": ["report", run],
        "extract": ["extract", str(tmp_path / "v.mp4"), "--transcript", "hi"],
        "extract-dataset": ["extract-dataset", str(tmp_path), "--labels", data, "--out", out],
        "predict": ["predict", data, "--run", run],
        "serve": ["serve", "--run", run],
    }[command]


COMMANDS = sorted([*OUTPUTS, *READ_ONLY])


@pytest.mark.parametrize("command", COMMANDS)
def test_the_guard_on_every_command(command, tmp_path, capsys, monkeypatch):
    """Whatever escapes a command is one line: a bug with a pointer to --debug (status 1), a
    path the user gave that the system refuses (status 2), Ctrl-C (130)."""
    raised: list[BaseException] = []

    def fail(args):
        raise raised[0]

    monkeypatch.setattr("selfmm.cli.check_output", fail)
    args = minimal_args(command, tmp_path)
    for exc, status, expected in [
        (ValueError("boom\nsecond line"), 1, "unexpected ValueError: boom (a bug in selfmm; run again with --debug"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y.pkl"), 2,
         "/x/y.pkl: No such file or directory"),
        (OSError(errno.ENAMETOOLONG, "File name too long", "x" * 300), 2, "File name too long"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/x"), 2, "/x: Is a directory"),
        (OSError(errno.EIO, "Input/output error", "/dev/sda"), 1, "/dev/sda: Input/output error"),
        (ModuleNotFoundError("no", name="opensmile"), 2, f"{command} needs the package opensmile"),
    ]:
        raised[:] = [exc]
        code, line = outcome(capsys, args)
        assert code == status and expected in line, (exc, line)
    raised[:] = [KeyboardInterrupt()]
    assert main(args) == 130 and capsys.readouterr().err == "selfmm: interrupted\n"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, tmp_path, capsys, monkeypatch):
    def fail(args):
        raise ValueError("boom")

    monkeypatch.setattr("selfmm.cli.check_output", fail)
    args = minimal_args("inspect", tmp_path)
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ValueError: boom" in err
    assert err.rstrip().splitlines()[-1].startswith("selfmm: error: unexpected ValueError: boom")


def test_debug_on_a_user_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "absent.pkl")]) == 2
    plain = capsys.readouterr().err
    assert plain.count("\n") == 1 and "absent.pkl" in plain
    assert main(["--debug", "inspect", str(tmp_path / "absent.pkl")]) == 2
    verbose = capsys.readouterr().err
    assert "Traceback" in verbose and verbose.rstrip().splitlines()[-1] == plain.rstrip()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_usage_mistake_is_one_line(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*minimal_args(command, tmp_path), "--no-such-flag"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("selfmm: error: unrecognized arguments: --no-such-flag") and "--help" in err
