"""The caption command's output holds up (issue 22): a closed pipe ends it
quietly, overlays of photos with the same name never overwrite each other, and
file names with control characters cannot break the tab-separated lines."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from showtell.cli import main, printable

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def test_printable_escapes_control_characters_and_undecodable_bytes():
    assert printable("photos/cat.jpg") == "photos/cat.jpg"
    assert printable("café ☕.jpg") == "café ☕.jpg"
    assert printable("a\nb\tc\rd\x1b[31m\x7f.jpg") == "a\\nb\\tc\\rd\\x1b[31m\\x7f.jpg"
    assert printable(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"


def test_same_names_in_two_folders_and_a_newline_in_a_name(tmp_path, capsys):
    for folder, photo in (("one", "cat.jpg"), ("two", "coffee.jpg")):
        (tmp_path / folder).mkdir()
        shutil.copy(EXAMPLES / photo, tmp_path / folder / "photo.jpg")
    odd = tmp_path / "two" / "new\nline\tname.jpg"
    shutil.copy(EXAMPLES / "hopper.jpg", odd)
    out_dir = tmp_path / "out"
    argv = ["caption", str(tmp_path / "one" / "photo.jpg"), str(tmp_path / "two" / "photo.jpg"), str(odd),
            "--attention", str(out_dir), "--no-guidance"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.count("\t") == 1 for line in lines), lines
    assert lines[2].startswith(str(tmp_path / "two" / "new\\nline\\tname.jpg") + "\t")
    names = sorted(os.listdir(out_dir))
    assert {"photo_grid.png", "photo-2_grid.png", "new_line_name_grid.png"} <= set(names)
    assert (out_dir / "photo_grid.png").read_bytes() != (out_dir / "photo-2_grid.png").read_bytes()


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    for i in range(12):
        shutil.copy(EXAMPLES / "cat.jpg", tmp_path / f"{i:02d}.jpg")
    proc = subprocess.Popen([sys.executable, "-m", "showtell", "caption", str(tmp_path), "--batch-size", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        first = proc.stdout.readline()  # then go away, as `| head -1` does
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert first.startswith(str(tmp_path / "00.jpg").encode())
    assert proc.returncode == 141 and err == "", err
