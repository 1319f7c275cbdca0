"""README and docs/: every relative link resolves, every file in docs/ is linked, and every
command they show is accepted by the script or command it names."""

import importlib
import re
import shlex
from pathlib import Path

import pytest

from segment.cli import BENCHMARKS, JOBS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# scripts/<name>.py -> the module whose parser it runs
SCRIPTS = {
    path.stem: re.search(r"^from (segment\.[\w.]+) import main$", path.read_text(), re.M).group(1)
    for path in sorted((ROOT / "scripts").glob("*.py"))
}
COMMANDS = {**{name: module for name, (module, _) in JOBS.items() if module},
            **{f"benchmark {name}": module for name, (module, _) in BENCHMARKS.items()}}


def _prose(text):
    """The text outside fenced and inline code, where Markdown links live."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(page):
    """GitHub's heading anchors of a page."""
    anchors, seen = set(), {}
    for line in re.sub(r"```.*?```", "", page.read_text(), flags=re.S).splitlines():
        heading = re.match(r"^#+\s+(.*)$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            anchors.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
    return anchors


def _links(page):
    """`(target path, anchor)` of each relative link on a page."""
    for link in LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        yield ((page.parent / path).resolve() if path else page), anchor


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target, anchor in _links(page):
            if not target.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{page.relative_to(ROOT)}: {target.name}#{anchor}")
    assert broken == []


def test_every_file_in_docs_is_linked_from_readme_or_a_page_it_links():
    reached, pages, queue = set(), set(), [ROOT / "README.md"]
    while queue:
        page = queue.pop()
        if page in pages:
            continue
        pages.add(page)
        for target, _ in _links(page):
            if target.is_file():
                reached.add(target)
                if target.suffix == ".md":
                    queue.append(target)
    unlinked = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "docs").rglob("*"))
                if path.is_file() and path.resolve() not in reached]
    assert unlinked == []


def _command_lines():
    """`(page, module, words after the command)` for each `python scripts/X.py ...` and
    `segment JOB ...` command shown in code blocks and inline code."""
    for page in PAGES:
        text = page.read_text()
        code = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
        code += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for block in code:
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0]
                for match in re.finditer(r"python (?:scripts/(\w+)\.py)(.*?)(?=&&|\||;|$)", line):
                    yield page, SCRIPTS.get(match.group(1), match.group(1)), match.group(2)
                for match in re.finditer(
                    r"(?:^|&& |\$ )segment ((?:benchmark )?[a-z][a-z-]*)(.*?)(?=&&|\||;|$)", line
                ):
                    yield page, COMMANDS.get(match.group(1), match.group(1)), match.group(2)


def _options(module_name):
    parser = importlib.import_module(module_name).build_parser()
    return set(parser._option_string_actions)


def test_the_pages_show_commands():
    shown = {module for _, module, _ in _command_lines()}
    assert {"segment.cli.train", "segment.cli.predict", "segment.cli.export"} <= shown


def test_every_flag_shown_is_accepted_by_its_command():
    refused = []
    for page, module, rest in _command_lines():
        if not module.startswith("segment."):
            refused.append(f"{page.relative_to(ROOT)}: no such script or command {module}")
            continue
        options = _options(module)
        try:
            words = shlex.split(rest)
        except ValueError:  # an unbalanced quote in a shortened example
            words = rest.split()
        flags = {word.split("=")[0] for word in words if re.match(r"^--[a-z]", word)}
        refused += [f"{page.relative_to(ROOT)}: {module} {flag}" for flag in sorted(flags)
                    if flag not in options]
    assert refused == []


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_script_names_a_module_with_a_parser(name):
    assert "--help" in _options(SCRIPTS[name])
