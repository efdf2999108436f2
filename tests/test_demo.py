"""The README's demo table is what scripts/demo.sh prints: its synth and train commands, read
from the script and run as written (on one thread, which prints the same table as the demo's
two), against the block in the README. On a mismatch the fresh table is printed, to paste."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo_commands(data: Path, run: Path) -> list[list[str]]:
    """The `selfmm` commands of scripts/demo.sh, its variables filled in (defaults for the
    environment's), without the shell around them."""
    script = (ROOT / "scripts" / "demo.sh").read_text().replace("\\\n", " ")
    commands = []
    for line in script.splitlines():
        found = re.search(r"\bselfmm (synth|train)\b.*", line)
        if found:
            text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", found[0])
            text = text.replace('"$data"', str(data)).replace('"$run"', str(run))
            assert "$" not in text, f"a variable of scripts/demo.sh this test does not know: {text}"
            commands.append(shlex.split(text)[1:])
    assert [c[0] for c in commands] == ["synth", "train"], commands
    return commands


def readme_table() -> list[str]:
    """The README's code block that starts like the demo's table."""
    blocks = (ROOT / "README.md").read_text().split("```")[1::2]
    return next(b for b in blocks if b.lstrip("\n").startswith("mosi test metrics")).strip("\n").splitlines()


def test_readme_demo_table_is_what_the_demo_prints(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    printed = ""
    for command in demo_commands(tmp_path / "mosi-scale0.25.pkl", tmp_path / "demo-out" / "run"):
        done = subprocess.run([sys.executable, "-m", "selfmm", *command], env=env, capture_output=True,
                              text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
        printed = done.stdout
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("mosi test metrics"))
    fresh = lines[start:start + 6]
    expected = readme_table()
    assert len(expected) == 6 and expected[0].split(": ")[0] == fresh[0].split(": ")[0], expected
    assert expected[1:] == fresh[1:], (
        "README's demo table is not what the demo prints now; paste this over it:\n"
        + "\n".join([expected[0], *fresh[1:]]))
