"""No command deletes or overwrites one of its own inputs, whatever --force says, and a failed
or interrupted write leaves nothing half-written (issue 17).

For each command with an output (evaluate --report, measure-sim --out, export --out,
tolerance --report, diagnose --report), pointing the output at its own input folder or file -- directly or
through a symbolic link -- with --force exits 2 with one line and leaves every input byte
for byte as it was. measure-sim refuses a dangling symbolic link without --force and a
folder always, before any work; its files, the evaluation report and the tolerance report
appear whole or not at all.
"""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import diffractive.measured.report as report_module
from d2nn.cli import build_parser, main
from diffractive.design import save_design

#: the commands with an output option, and which option (train's --out is checked by training's tests)
OUTPUTS = {"evaluate": "report", "measure-sim": "out", "export": "out", "tolerance": "report", "train": "out",
           "diagnose": "report"}


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_design):
    """A design folder (with a tolerance report in it, which export reads), and measurements of it."""
    root = tmp_path_factory.mktemp("safety")
    design = root / "design"
    save_design(small_design(), design)
    (design / "tolerance").mkdir()
    (design / "tolerance" / "tolerance.json").write_text("{}\n")
    lab = root / "lab"
    lab.mkdir()
    for fmt, name in (("csv", "lab.csv"), ("scan", "scan.npz")):
        assert main(["measure-sim", str(design), "--dataset", "digits", "--samples", "4", "--format", fmt,
                     "--out", str(lab / name), "--dark", "0.01", "--json"]) == 0
    (lab / "budget.toml").write_text("absorption = false\nquantise = false\n")
    return root


@pytest.fixture
def quick_figures(monkeypatch):
    """The report's figures replaced by a few bytes each: these tests are about files, not plots."""
    def stub(ev, *args, **kw):
        Path(args[-1] if args else kw["path"]).write_bytes(b"\x89PNG stub")
    for name in ("confusion_figure", "powers_figure", "distribution_figure", "margin_figure", "scan_figure"):
        monkeypatch.setattr(report_module, name, stub)


@pytest.fixture
def tree(base, tmp_path):
    """A fresh copy of ``base`` for one test (tests may damage it if the code under test is wrong)."""
    dst = tmp_path / "t"
    shutil.copytree(base, dst, symlinks=True)
    return dst


def snapshot(*folders):
    """{path: bytes or ('link', target)} of everything under ``folders`` (links not followed)."""
    out = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    out[p] = ("link", os.readlink(p))
                elif os.path.isfile(p):
                    with open(p, "rb") as f:
                        out[p] = f.read()
                else:
                    out[p] = "dir"
    return out


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def refused(capsys, *argv):
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and err.startswith(f"d2nn {argv[0]}: error: "), err
    return err


def _cases(t):
    """(argv, what the message names) of each command aimed at its own inputs, all with --force."""
    design, lab = t / "design", t / "lab"
    (t / "to_design").symlink_to(design, target_is_directory=True)
    (t / "to_lab").symlink_to(lab, target_is_directory=True)
    (t / "to_phases.npz").symlink_to(design / "phases.npz")
    (t / "to_design.csv").symlink_to(design / "design.json")
    (t / "to_measured.csv").symlink_to(lab / "lab.csv")
    ev = ["evaluate", design, "--measured", lab / "lab.csv", "--background", lab / "lab-dark.csv", "--force"]
    ms = ["measure-sim", design, "--dataset", "digits", "--samples", "2", "--force"]
    tol = ["tolerance", design, "--dataset", "digits", "--samples", "5", "--draws", "1", "--kinds", "none",
           "--force", "--quiet"]
    dg = ["diagnose", design, "--measured", lab / "lab.csv", "--dataset", "digits", "--force", "--quiet"]
    return [
        (ev + ["--report", design], "design.json"),
        (ev + ["--report", t / "to_design"], "design.json"),
        (ev + ["--report", lab], "lab.csv"),                       # the folder holding the measurement
        (ev + ["--report", t / "to_lab"], "lab.csv"),
        (ev + ["--report", lab / "lab.csv"], "lab.csv"),           # the measurement itself
        (ev + ["--report", t], "design.json"),                     # a folder above the inputs
        (["evaluate", design / "design.json", "--measured", lab / "scan.npz", "--report", design, "--force"],
         "design.json"),
        (ms + ["--format", "scan", "--out", design / "phases.npz"], "phases.npz"),
        (ms + ["--format", "scan", "--out", t / "to_phases.npz"], "phases.npz"),
        (ms + ["--format", "csv", "--out", t / "to_design.csv"], "design.json"),
        (ms + ["--format", "csv", "--out", lab / "lab.csv", "--budget", lab / "budget.toml"], None),  # not an input
        (["export", design, "--out", design, "--force", "--quiet"], "design.json"),
        (["export", design, "--out", t / "to_design", "--force", "--quiet"], "design.json"),
        (["export", design, "--out", design / "tolerance", "--force", "--quiet"], "tolerance.json"),
        (["export", design, "--out", t, "--force", "--quiet"], "design.json"),
        (tol + ["--report", design], "design.json"),
        (tol + ["--report", t / "to_design"], "design.json"),
        (tol + ["--report", lab, "--budget", lab / "budget.toml"], "budget.toml"),
        (dg + ["--report", design], "design.json"),
        (dg + ["--report", lab], "lab.csv"),
        (dg + ["--report", lab / "lab.csv"], "lab.csv"),
        (dg + ["--report", lab, "--background", lab / "lab-dark.csv", "--budget", lab / "budget.toml"], "lab.csv"),
    ]


def test_no_command_writes_over_its_own_inputs_even_with_force(capsys, tree):
    cases = [c for c in _cases(tree) if c[1] is not None]
    before = snapshot(tree)
    for argv, named in cases:
        err = refused(capsys, *argv)
        assert "an input of this command" in err and named in err, (argv, err)
        assert snapshot(tree) == before, argv  # every input, every byte; nothing added
    assert len(cases) == 21


def test_measure_sim_may_replace_a_file_that_is_not_its_input(capsys, tree):
    """The one case above that is not refused: lab.csv is an output of measure-sim, not an input."""
    argv, named = [c for c in _cases(tree) if c[1] is None][0]
    design_before = snapshot(tree / "design")
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert snapshot(tree / "design") == design_before


def test_every_output_option_is_covered():
    """A command that gains an output option must be added to the cases above (and checked)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    found = {}
    for name, p in sub.choices.items():
        for a in p._actions:
            if a.dest in ("out", "report", "output", "out_dir", "save"):
                found[name] = a.dest
    assert found == OUTPUTS  # simulate has no output: it prints


def test_measure_sim_refuses_a_dangling_link_without_force_and_a_folder_always(capsys, tree):
    lab = tree / "lab"
    link = lab / "new.csv"
    link.symlink_to(lab / "nowhere.csv")
    before = snapshot(tree)
    argv = ["measure-sim", tree / "design", "--dataset", "digits", "--samples", "2", "--format", "csv"]
    err = refused(capsys, *argv, "--out", link)
    assert "new.csv is a dangling symbolic link" in err and "--force" in err
    assert snapshot(tree) == before and os.readlink(link) == str(lab / "nowhere.csv")
    folder = lab / "dir.csv"
    folder.mkdir()
    before = snapshot(tree)
    err = refused(capsys, *argv, "--out", folder, "--force", "--dark", "0.1")
    assert "dir.csv is a folder" in err
    assert snapshot(tree) == before  # no dir.csv.truth.json, no dir-dark.csv
    (lab / "x.csv.truth.json").mkdir()  # the second output is a folder: refused before the first is written
    err = refused(capsys, *argv, "--out", lab / "x.csv", "--force")
    assert "x.csv.truth.json is a folder" in err and not (lab / "x.csv").exists()
    code, _, err = run(capsys, *argv, "--out", link, "--force")  # with --force the link itself is replaced
    assert code == 0, err
    assert link.is_file() and not link.is_symlink() and not (lab / "nowhere.csv").exists()


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (p.name.endswith(".tmp")
                                                                             or p.name.endswith(".old")))


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_an_interrupted_measure_sim_write_leaves_nothing_behind(capsys, tree, monkeypatch, fail_at):
    """Interrupted at the first, second or third rename of its three files: the folder is as it
    was before, old files kept byte for byte (with --force), no temporary file left."""
    lab = tree / "lab"
    before = snapshot(lab)
    real = os.replace
    calls = []

    def flaky(src, dst, *a, **kw):
        calls.append(dst)
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", flaky)
    code, _, err = run(capsys, "measure-sim", tree / "design", "--dataset", "digits", "--samples", "3",
                       "--format", "csv", "--out", lab / "lab.csv", "--dark", "0.2", "--seed", "9", "--force")
    monkeypatch.setattr(os, "replace", real)
    assert code == 130 and "interrupted" in err
    assert len(calls) >= fail_at
    assert snapshot(lab) == before and not _leftovers(lab)


def test_a_failed_measure_sim_staging_leaves_nothing_behind(capsys, tree, monkeypatch):
    lab = tree / "lab"
    before = snapshot(lab)
    real, calls = os.fsync, []

    def failing(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match="No space left"):
        main(["measure-sim", str(tree / "design"), "--dataset", "digits", "--samples", "3", "--format", "csv",
              "--out", str(lab / "fresh.csv"), "--dark", "0.2"])
    capsys.readouterr()
    assert snapshot(lab) == before and not _leftovers(lab)


def test_a_failed_report_leaves_no_folder_and_keeps_the_old_report(capsys, tree, monkeypatch, quick_figures):
    lab = tree / "lab"
    rep = tree / "report"
    argv = ["evaluate", tree / "design", "--measured", lab / "lab.csv", "--report", rep]

    def broken(*a, **kw):
        raise RuntimeError("matplotlib broke")

    stub_margin = report_module.margin_figure

    monkeypatch.setattr(report_module, "margin_figure", broken)
    with pytest.raises(RuntimeError):
        main([str(a) for a in argv])
    capsys.readouterr()
    assert not rep.exists() and not _leftovers(tree)
    monkeypatch.setattr(report_module, "margin_figure", stub_margin)
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    (rep / "stale.txt").write_text("from an earlier run")  # the same run writes the same bytes: mark the old one
    old = snapshot(rep)
    monkeypatch.setattr(report_module, "margin_figure", broken)
    with pytest.raises(RuntimeError):
        main([str(a) for a in argv] + ["--force"])
    capsys.readouterr()
    assert snapshot(rep) == old and not _leftovers(tree)
    # interrupted while the new folder is being renamed into place: the old one is put back
    monkeypatch.setattr(report_module, "margin_figure", stub_margin)
    real, calls = os.replace, []

    def flaky(src, dst, *a, **kw):
        calls.append(dst)
        if str(dst) == str(rep) and str(src).endswith(".tmp"):  # the finished folder renamed into place
            raise KeyboardInterrupt
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", flaky)
    code, _, err = run(capsys, *argv, "--force")
    monkeypatch.setattr(os, "replace", real)
    assert code == 130 and snapshot(rep) == old and not _leftovers(tree) and len(calls) >= 3
    code, _, err = run(capsys, *argv, "--force")  # and when nothing fails, the report is replaced
    assert code == 0 and not (rep / "stale.txt").exists() and (rep / "report.md").is_file()
    assert not _leftovers(tree)


def test_report_onto_a_dangling_link_needs_force(capsys, tree, quick_figures):
    link = tree / "rep"
    link.symlink_to(tree / "gone")
    argv = ["evaluate", tree / "design", "--measured", tree / "lab" / "lab.csv", "--report", link]
    err = refused(capsys, *argv)
    assert "dangling symbolic link" in err and os.path.islink(link) and not (tree / "gone").exists()
    code, _, err = run(capsys, *argv, "--force")
    assert code == 0, err
    assert link.is_dir() and not link.is_symlink() and (link / "report.md").is_file()


def test_a_failed_tolerance_report_leaves_nothing_behind(capsys, tree, monkeypatch):
    import diffractive.tolerance_report as tolerance_report

    rep = tree / "tol"
    argv = ["tolerance", tree / "design", "--dataset", "digits", "--samples", "10", "--draws", "1", "--kinds", "none",
            "--budget", "hand", "--quiet", "--report", rep]

    def broken(*a, **kw):
        raise RuntimeError("disk full half-way")

    monkeypatch.setattr(tolerance_report, "html_page", broken)
    with pytest.raises(RuntimeError):
        main([str(a) for a in argv])
    capsys.readouterr()
    assert not rep.exists() and not _leftovers(tree)
    monkeypatch.undo()
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert {p.name for p in rep.iterdir()} == {"tolerance.json", "tolerance.md", "tolerance.html"}
    (rep / "notes.txt").write_text("mine")
    old = snapshot(rep)
    monkeypatch.setattr(tolerance_report, "html_page", broken)
    with pytest.raises(RuntimeError):
        main([str(a) for a in argv] + ["--force"])
    capsys.readouterr()
    assert snapshot(rep) == old and not _leftovers(tree)  # the old report and the user's file untouched


def test_export_refuses_a_dangling_link_before_any_work(capsys, tree):
    shutil.rmtree(tree / "design" / "tolerance")  # its stub report is refused by export, before the target is
    link = tree / "stl"
    link.symlink_to(tree / "gone")
    before = snapshot(tree)
    err = refused(capsys, "export", tree / "design", "--out", link, "--force", "--verify", "no", "--quiet")
    assert "stl is a dangling symbolic link" in err
    assert snapshot(tree) == before and os.path.islink(link) and not (tree / "gone").exists()
