"""The `segment` command: every job, the same flags and help as its script, thin scripts."""

import ast
import importlib
import runpy
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import segment.cli
from segment.cli import BENCHMARKS, JOBS, main

ROOT = Path(__file__).resolve().parents[1]
# scripts/<name>.py -> the words after `segment` that run the same job
SCRIPT_JOBS = {
    "train": "train", "predict": "predict", "evaluate": "evaluate", "export": "export",
    "serve": "serve", "generate_data": "generate", "make_contact_sheet": "contact-sheet",
    "benchmark_losses": "benchmark losses", "benchmark_real": "benchmark real",
    "benchmark_speed": "benchmark speed", "evaluate_robustness": "benchmark robustness",
    "loadtest_serve": "benchmark serving", "benchmark_grouping": "benchmark grouping",
    "benchmark_interactive": "benchmark interactive", "benchmark_profile": "benchmark profile",
    "import_masks": "import-masks",
}


def _module(job):
    words = job.split()
    return BENCHMARKS[words[1]][0] if words[0] == "benchmark" else JOBS[words[0]][0]


def test_every_script_is_a_job_and_every_job_a_script():
    assert sorted(path.stem for path in (ROOT / "scripts").glob("*.py")) == sorted(SCRIPT_JOBS)
    jobs = {job.split()[-1] if job.startswith("benchmark") else job for job in SCRIPT_JOBS.values()}
    assert jobs == (set(JOBS) - {"benchmark"}) | set(BENCHMARKS)


@pytest.mark.parametrize("script", sorted(SCRIPT_JOBS))
def test_each_script_is_a_thin_shell_over_its_job(script):
    path = ROOT / "scripts" / f"{script}.py"
    tree = ast.parse(path.read_text())
    # A docstring, two imports and the __main__ guard: nothing else to drift from the job.
    assert [type(node).__name__ for node in tree.body] == [
        "Expr", "Import", "ImportFrom", "If"
    ]
    shell = runpy.run_path(str(path), run_name="not_main")
    assert shell["main"] is importlib.import_module(_module(SCRIPT_JOBS[script])).main


@pytest.mark.parametrize("job", sorted(SCRIPT_JOBS.values()))
def test_each_job_shows_its_own_help_under_its_name(job, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*job.split(), "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: segment {job} ")
    parser = importlib.import_module(_module(job)).build_parser()
    flags = [flag for flag in parser._option_string_actions if flag.startswith("--")]
    assert flags and all(flag in text for flag in flags)


def test_the_command_lists_its_jobs_and_refuses_unknown_ones(capsys):
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(f"  {job} " in listing for job in JOBS)
    assert main([]) == 2  # the same listing, on stderr
    assert "usage: segment JOB" in capsys.readouterr().err
    assert main(["trian"]) == 2
    assert "unknown job 'trian'; choose from train, predict" in capsys.readouterr().err
    assert main(["benchmark", "--help"]) == 0
    benchmarks = capsys.readouterr().out
    assert all(f"  {name} " in benchmarks for name in BENCHMARKS)
    assert main(["benchmark", "speeed"]) == 2
    assert "unknown benchmark 'speeed'" in capsys.readouterr().err


def test_a_job_s_exit_status_is_the_command_s(monkeypatch):
    calls = []

    def fake_main(argv=None, prog=None):
        calls.append((argv, prog))
        return 7

    monkeypatch.setattr(importlib.import_module("segment.cli.export"), "main", fake_main)
    assert main(["export", "--model", "m.keras"]) == 7
    assert calls == [(["--model", "m.keras"], "segment export")]


def test_python_m_segment_is_the_command(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["segment", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("segment", run_name="__main__")
    assert exit_info.value.code == 0
    assert "usage: segment JOB" in capsys.readouterr().out


def test_the_installed_command_is_this_main():
    (command,) = entry_points(group="console_scripts", name="segment")
    assert command.load() is segment.cli.main


@pytest.mark.slow
def test_python_m_segment_runs_a_job_like_its_script():
    def help_text(*args):
        result = subprocess.run([sys.executable, *args, "--help"], capture_output=True,
                                text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout

    # The same text, but for the program's name and how argparse wraps the usage around it.
    as_module = help_text("-m", "segment", "predict").replace("segment predict", "predict.py")
    as_script = help_text("scripts/predict.py")
    assert as_module.split() == as_script.split()
