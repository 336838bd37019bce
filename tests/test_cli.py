"""d2nn/cli.py: every command module loads or the command fails loudly; errors are one line."""
import subprocess
import sys

import pytest

from d2nn import cli
from diffractive import D2NNError
from diffractive.errors import OutputExists


def test_a_missing_command_module_fails_loudly(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + ["no_such_command"])
    with pytest.raises(ImportError, match="d2nn.commands.no_such_command is missing"):
        cli.build_parser()
    with pytest.raises(ImportError, match="no_such_command is missing"):
        cli.main(["--help"])


def test_every_listed_command_is_registered():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(c.replace("_", "-") for c in cli.COMMANDS)


def test_bad_options_are_one_line(capsys):
    assert cli.main(["export"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("d2nn export: error: the following arguments are required")
    assert cli.main(["export", "x", "--out", "y", "--z-step", "16e-6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["d2nn export: error: argument --z-step: '16e-6' has no unit: give a unit, e.g. 0.1mm "
                   "(m, cm, mm, um, nm) (see 'd2nn export --help')"]


def test_library_errors_are_caught_once_and_worded_with_flags(monkeypatch, capsys, tmp_path):
    from d2nn.commands import export

    def boom(args):
        raise D2NNError("z_step_m must be a positive finite number, got -1.0")

    monkeypatch.setattr(export, "run", boom)
    assert cli.main(["export", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "d2nn export: error: z_step_m must be a positive finite number, got -1.0\n"

    def exists(args):
        raise OutputExists(tmp_path, "exists and is not empty", {"force": "replace the export in it"})

    monkeypatch.setattr(export, "run", exists)
    assert cli.main(["export", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"d2nn export: error: {tmp_path} exists and is not empty; pass --force to " \
                                      "replace the export in it\n"
    assert "pass force=True" in str(OutputExists(tmp_path, "exists and is not empty", {"force": "replace it"}))


def test_help_and_version_exit_cleanly():
    out = subprocess.run([sys.executable, "-m", "d2nn", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("d2nn ")


def test_every_help_text_renders_its_percent_signs():
    """argparse %-formats argument help but prints descriptions as written: a '%%' meant for
    one kind of text shows up doubled in the other."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        text = command.format_help()
        assert "%%" not in text, f"d2nn {name} --help shows a doubled percent sign"
