"""Never overwrite a user's file: the one output policy (selfmm.cli.outputs) on every command that
writes, against an existing file, a foreign folder, a folder where a file goes, one of its own
inputs, a name too long, and its own documented resume or append target.

The policy runs before any handler, so the inputs named here need not exist: what is refused
is refused before anything is read.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from selfmm.cli import main
from selfmm.cli.outputs import OUTPUTS, READ_ONLY, check_output
from selfmm.cli.parser import build_parser
from selfmm.errors import SelfMMError

from .helpers import copy_run

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def argv(command: str, out: Path, root: Path) -> list[str]:
    """`command` writing to `out`; its inputs live in `root` (and need not exist)."""
    run, data = str(root / "in-run"), str(root / "in.pkl")
    return {
        "train": ["train", "--dataset", "mosi", "--data", data, "--out", str(out)],
        "reproduce": ["reproduce", "--dataset", "mosi", "--data", data, "--out", str(out)],
        "ablate": ["ablate", "--dataset", "mosi", "--data", data, "--out", str(out)],
        "tune": ["tune", "--dataset", "mosi", "--data", data, "--out", str(out)],
        "import-mmsa": ["import-mmsa", str(root / "w.pth"), "--dataset", "mosi", "--out", str(out)],
        "synth": ["synth", "--profile", "mosi", "--out", str(out)],
        "cache": ["cache", data, "--out", str(out)],
        "labels": ["labels", run, "--out", str(out)],
        "report": ["report", run, "--out", str(out)],
        "export-mmsa": ["export-mmsa", run, "--out", str(out)],
        "extract": ["extract", str(root / "clip.mp4"), "--transcript", "it was fine", "--out", str(out)],
        "extract-dataset": ["extract-dataset", str(root / "videos"), "--labels", str(root / "label.csv"),
                            "--out", str(out)],
    }[command]


WRITING = sorted(OUTPUTS)
FOLDERS = [c for c in WRITING if OUTPUTS[c].folder]
FILES = [c for c in WRITING if not OUTPUTS[c].folder]


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def refused(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def allowed(args: list[str]) -> None:
    check_output(build_parser().parse_args(args))


def commands() -> dict:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def options(command: str) -> set[str]:
    return {flag for action in commands()[command]._actions for flag in action.option_strings}


def test_every_command_declares_what_it_writes():
    """A new command cannot be added without choosing: an output policy, or read-only. The
    policy's own flag, --force, is there exactly where the policy lets it replace something."""
    assert set(commands()) == set(OUTPUTS) | set(READ_ONLY) and not set(OUTPUTS) & set(READ_ONLY)
    for name in commands():
        flags = options(name)
        assert ("--force" in flags) == (name in OUTPUTS and OUTPUTS[name].force), name
        assert "--debug" in flags
        if name in OUTPUTS:
            assert f"--{OUTPUTS[name].flag}" in flags


def test_the_policy_is_documented_command_by_command():
    text = DOCS.read_text()
    for name, spec in OUTPUTS.items():
        assert f"`{name}`" in text and spec.policy in text, name
    for name in READ_ONLY:
        assert f"`{name}`" in text


@pytest.mark.parametrize("command", WRITING)
def test_an_existing_file_is_never_replaced_without_force(command, tmp_path, capsys):
    mine = tmp_path / "mine.pkl"
    mine.write_bytes(b"a benchmark file")
    before = snapshot(tmp_path)
    err = refused(capsys, argv(command, mine, tmp_path))
    assert str(mine) in err
    assert ("exists and is not a directory" if command in FOLDERS else "exists; pass --force") in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", WRITING)
def test_a_foreign_folder_is_refused_whatever_the_flags(command, tmp_path, capsys):
    folder = tmp_path / "things"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    flags = [f for f in ("--force", "--resume") if f in options(command)]
    for extra in ([], flags):
        err = refused(capsys, argv(command, folder, tmp_path) + extra)
        if command in FOLDERS:
            assert "holds files that are not part of a selfmm" in err and "(notes.txt)" in err
        else:
            assert f"{folder} is a folder; name a file" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", FILES)
def test_force_replaces_a_file(command, tmp_path):
    mine = tmp_path / "mine.pkl"
    mine.write_bytes(b"x")
    with pytest.raises(SelfMMError, match="pass --force"):
        allowed(argv(command, mine, tmp_path))
    allowed(argv(command, mine, tmp_path) + ["--force"])


@pytest.mark.parametrize("command", WRITING)
def test_an_empty_or_new_folder_and_a_new_file_are_fine(command, tmp_path):
    (tmp_path / "empty").mkdir()
    allowed(argv(command, tmp_path / ("empty" if command in FOLDERS else "new.pkl"), tmp_path))
    allowed(argv(command, tmp_path / "new" / "deeper" / "out", tmp_path))


@pytest.mark.parametrize("command", WRITING)
def test_names_too_long_and_files_for_folders_are_one_line(command, tmp_path, capsys):
    long = tmp_path / ("x" * 300)
    assert "longer than the file system allows" in refused(capsys, argv(command, long, tmp_path))
    (tmp_path / "plain").write_text("x")
    err = refused(capsys, argv(command, tmp_path / "plain" / "out", tmp_path))
    assert f"{tmp_path / 'plain'} is a file, not a folder" in err


def inputs_as_outputs(root: Path) -> list[tuple[str, list[str], str]]:
    """(command, arguments whose output is one of its inputs, what the refusal says)."""
    video, said, labels, data = root / "clip.mp4", root / "said.txt", root / "label.csv", root / "in.pkl"
    return [
        ("extract", ["extract", str(video), "--transcript", "hi", "--out", str(video)], "is also an input (video)"),
        ("extract", ["extract", str(video), "--transcript", str(said), "--out", str(said)],
         "is also an input (transcript)"),
        ("extract-dataset", ["extract-dataset", str(root), "--labels", str(labels), "--out", str(labels)],
         "is also an input (labels)"),
        ("report", ["report", str(root / "run"), "--data", str(data), "--out", str(data)], "is also an input (data)"),
        ("cache", ["cache", str(data), "--out", str(data)], "is also an input (file)"),
        ("import-mmsa", ["import-mmsa", str(video), "--dataset", "mosi", "--out", str(video)],
         "is also an input (weights)"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_an_output_never_replaces_an_input(case, tmp_path, capsys):
    command, args, message = inputs_as_outputs(tmp_path)[case]
    for name in ("clip.mp4", "said.txt", "label.csv", "in.pkl"):
        (tmp_path / name).write_bytes(b"input")
    assert message in refused(capsys, args + (["--force"] if OUTPUTS[command].force else []))
    assert all((tmp_path / n).read_bytes() == b"input" for n in ("clip.mp4", "said.txt", "label.csv", "in.pkl"))


# --- each command's own resume or append target ------------------------------------------


def test_a_run_is_continued_only_with_resume(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run", checkpoints=False)
    for command in ("train", "reproduce"):
        err = refused(capsys, argv(command, run, tmp_path))
        assert "already holds a run; pass --resume" in err
        allowed(argv(command, run, tmp_path) + ["--resume"])
    # An ablation holds one run per task combination.
    ablation = tmp_path / "ablation"
    copy_run(tiny_run, ablation / "MTAV", checkpoints=False)
    (ablation / "ablation.json").write_text("{}")
    assert "pass --resume" in refused(capsys, argv("ablate", ablation, tmp_path))
    allowed(argv("ablate", ablation, tmp_path) + ["--resume"])
    # Neither another command's folder nor a run is an ablation.
    assert "not part of a selfmm run" in refused(capsys, argv("ablate", run, tmp_path) + ["--resume"])


def test_a_tuning_directory_is_continued_and_an_import_never_replaced(tiny_run, tmp_path, capsys):
    tuning = tmp_path / "tuning"
    (tuning / "trial-0").mkdir(parents=True)
    (tuning / "tune.json").write_text("{}")
    (tuning / "study.db").write_bytes(b"")
    allowed(argv("tune", tuning, tmp_path))
    imported = tmp_path / "imported"
    (imported / "encoder").mkdir(parents=True)
    for name in ("config.json", "best.safetensors"):
        (imported / name).write_bytes(b"{}")
    assert "choose another folder" in refused(capsys, argv("import-mmsa", imported, tmp_path))
    assert "not part of a selfmm tuning run" in refused(capsys, argv("tune", imported, tmp_path))


def test_a_cache_is_rewritten_with_force_an_interrupted_one_without(tmp_path, capsys):
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "train.audio.npy").write_bytes(b"")
    (cache / "valid.strings.json").write_text("{}")
    allowed(argv("cache", cache, tmp_path))  # no manifest: an interrupted write
    (cache / "manifest.json").write_text("{}")
    assert "already holds a cache; pass --force" in refused(capsys, argv("cache", cache, tmp_path))
    allowed(argv("cache", cache, tmp_path) + ["--force"])
    # The default folder, FILE.selfmm-cache, follows the same rules.
    default = tmp_path / "in.pkl.selfmm-cache"
    default.mkdir()
    (default / "notes.txt").write_text("x")
    args = ["cache", str(tmp_path / "in.pkl")]
    assert "not part of a selfmm cache" in refused(capsys, args)


def test_labels_draw_again_into_their_own_folder(tmp_path, capsys):
    out = tmp_path / "labels"
    (out / "seed-7").mkdir(parents=True)
    for name in ("summary.txt", "seed-7/distance.png", "seed-7/summary.txt"):
        (out / name).write_text("old")
    allowed(argv("labels", out, tmp_path))
    (out / "seed-7" / "notes.txt").write_text("mine")
    assert "not part of a selfmm u-label plot folder" in refused(capsys, argv("labels", out, tmp_path))
    # The default, RUN/labels, too.
    (tmp_path / "in-run" / "labels").mkdir(parents=True)
    (tmp_path / "in-run" / "labels" / "todo.md").write_text("mine")
    assert "not part of a selfmm u-label plot folder" in refused(capsys, ["labels", str(tmp_path / "in-run")])


def test_the_default_report_is_refreshed_an_explicit_one_is_not(tmp_path, capsys):
    run = tmp_path / "in-run"
    run.mkdir()
    (run / "report.html").write_text("old report")
    allowed(["report", str(run)])
    allowed(["report", str(run), "--out", str(run / "report.html")])
    allowed(["report", str(run), "--out", str(run / ".." / "in-run" / "report.html")])
    (tmp_path / "notes.html").write_text("mine")
    assert "pass --force" in refused(capsys, ["report", str(run), "--out", str(tmp_path / "notes.html")])


def test_export_appends_to_an_mmsa_csv_and_refuses_anything_else(tiny_run, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path / "run", checkpoints=False)
    table = tmp_path / "mosi.csv"
    assert main(["export-mmsa", str(run), "--out", str(table)]) == 0
    assert main(["export-mmsa", str(run), "--out", str(table), "--model-name", "again"]) == 0
    with open(table, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][0] == "Model" and [r[0] for r in rows[1:]] == ["self_mm", "again"]
    capsys.readouterr()
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\n1,2\n")
    refused(capsys, ["export-mmsa", str(run), "--out", str(notes)])
    assert notes.read_text() == "my,own\n1,2\n"
    assert main(["export-mmsa", str(run), "--out", str(notes), "--force"]) == 0
    with open(notes, newline="") as handle:
        assert [r[0] for r in csv.reader(handle)] == ["Model", "self_mm"]


def test_extract_dataset_reuses_its_parts_and_guards_its_report(tmp_path, capsys):
    out = tmp_path / "feats.pkl"
    parts = tmp_path / "feats.pkl.parts"
    parts.mkdir()
    (parts / "v_1-0123456789.egemaps.npz").write_bytes(b"")
    (parts / ".v_2.npz.abc.tmp").write_bytes(b"")  # an interrupted write
    allowed(argv("extract-dataset", out, tmp_path))
    Path(f"{out}.json").write_text('{"feature_version": "1"}')
    allowed(argv("extract-dataset", out, tmp_path))  # its own report beside OUT
    Path(f"{out}.json").write_text("my notes")
    assert "feats.pkl.json exists; pass --force" in refused(capsys, argv("extract-dataset", out, tmp_path))
    allowed(argv("extract-dataset", out, tmp_path) + ["--force"])
    (parts / "notes.txt").write_text("mine")
    err = refused(capsys, argv("extract-dataset", out, tmp_path) + ["--force"])
    assert "feats.pkl.parts holds files that are not part of a selfmm folder of extracted parts" in err


def test_synth_force_really_replaces_and_the_user_file_survives_without(tmp_path, capsys):
    mine = tmp_path / "mosi.pkl"
    mine.write_bytes(b"the real benchmark")
    refused(capsys, ["synth", "--profile", "mosi", "--scale", "0.001", "--out", str(mine)])
    assert mine.read_bytes() == b"the real benchmark"
    assert main(["synth", "--profile", "mosi", "--scale", "0.001", "--out", str(mine), "--force"]) == 0
    assert mine.read_bytes() != b"the real benchmark"
    assert [p.name for p in tmp_path.iterdir()] == ["mosi.pkl"]  # no temporary left
