"""The docs stay alive: every relative link in README.md and docs/*.md points to an existing file (and
heading, GitHub-style anchor), every `python tools/X.py ...` / `python train/run.py ...` command in them
uses only options that tool's argparse parser accepts (and a complete command in a code block parses
as typed), `.ci/run` runs the README's test command, and the README stays short.

The parsers are the tools' own: one child process imports every tool module with argparse's
`parse_known_args` replaced by a function that hands back the parser it was called on, then calls the
module's `parse_args` (or `main`), so no tool runs and no option list is copied here."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / 'README.md'
README_LIMIT = 10 * 1024  # bytes: the README is read in minutes; the detail lives in docs/

# A tool invocation: `python tools/X.py`, `train/run.py` (also after torchrun's options) or `python -m tools.X`.
TOOL_CALL = re.compile(r'(?:(?<![\w/.])(tools/\w+\.py|train/run\.py)|python3?\s+-m\s+(tools\.\w+))(?![\w.])')
# Where a command ends on its line: a shell comment, a command separator, a pipe between words, prose arrows.
COMMAND_END = re.compile(r'\s#|\s&&|\s\|\|?\s|;|→')
FLAG = re.compile(r'(?<![\w/.\-])(--?[A-Za-z][\w-]*)')
LINK = re.compile(r'!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
REFERENCE_LINK = re.compile(r'^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$')
INLINE_CODE = re.compile(r'(`+)(.+?)\1', re.S)
FENCE = re.compile(r'^\s*(```|~~~)')

# Reads {"modules": [...], "commands": [[module, [arg, ...]], ...]} on stdin; prints each module's option
# strings and, per command, None or the error its parser gives.
_CAPTURE = r'''
import argparse, contextlib, importlib, io, json, sys
class Captured(BaseException):
    def __init__(self, parser):
        self.parser = parser
def capture(self, *args, **kwargs):
    raise Captured(self)
request = json.load(sys.stdin)
original = argparse.ArgumentParser.parse_known_args
argparse.ArgumentParser.parse_known_args = capture
parsers = {}
for name in request['modules']:
    module = importlib.import_module(name)
    entry = getattr(module, 'parse_args', None) or getattr(module, 'main')
    try:
        entry([])
    except Captured as c:
        parsers[name] = c.parser
argparse.ArgumentParser.parse_known_args = original
errors = []
for name, args in request['commands']:
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            parsers[name].parse_args(args)
        errors.append(None)
    except SystemExit as e:
        errors.append(None if e.code == 0 else err.getvalue().strip().splitlines()[-1])
    except KeyError:
        errors.append('could not read its argparse parser')
print(json.dumps({'options': {n: sorted(p._option_string_actions) for n, p in parsers.items()}, 'errors': errors}))
'''


def doc_files() -> list[Path]:
    return [README, *sorted((REPO / 'docs').glob('*.md'))]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def split_markdown(text: str):
    """(line number, line, inside a fenced code block) for every line, fence lines left out."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        yield number, line, fenced


def paragraphs(text: str):
    """(first line number, text) of every prose paragraph (lines up to a blank line or a fence),
    so that inline code and links that wrap onto the next line are seen whole."""
    lines, start = [], 0
    for number, line, fenced in split_markdown(text):
        if fenced or not line.strip():
            if lines:
                yield start, '\n'.join(lines)
            lines = []
            continue
        if not lines:
            start = number
        lines.append(line)
    if lines:
        yield start, '\n'.join(lines)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link targets and markup dropped, lower case, punctuation removed
    (letters, digits, `_`, `-` and spaces kept), spaces → hyphens."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip())
    text = re.sub(r'<[^>]+>', '', text).lower()
    text = ''.join(ch for ch in text if ch.isalnum() or ch in '_- ')
    return text.replace(' ', '-')


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line, fenced in split_markdown(path.read_text(encoding='utf-8')):
        m = None if fenced else re.match(r'^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$', line)
        if m:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f'{slug}-{n}')
    return out


def links(path: Path):
    """(line number, target) of every link outside code (inline and reference-style)."""
    for start, text in paragraphs(path.read_text(encoding='utf-8')):
        prose = INLINE_CODE.sub(lambda m: '\n' * m.group(0).count('\n'), text)
        for m in LINK.finditer(prose):
            yield start + prose.count('\n', 0, m.start()), m.group(1)
        for offset, line in enumerate(prose.split('\n')):
            m = REFERENCE_LINK.match(line)
            if m:
                yield start + offset, m.group(1)


def code_lines(path: Path):
    """(line number, text, fenced) of every shell-like line: fenced lines (with `\\` continuations joined)
    and inline code spans of prose (a span that wraps is joined with a space)."""
    text = path.read_text(encoding='utf-8')
    pending, start = '', 0
    for number, line, fenced in split_markdown(text):
        if not fenced:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith('\\'):
            pending += line.rstrip()[:-1] + ' '
            continue
        yield start, pending + line, True
        pending = ''
    if pending:
        yield start, pending, True
    for start, paragraph in paragraphs(text):
        for m in INLINE_CODE.finditer(paragraph):
            yield start + paragraph.count('\n', 0, m.start()), m.group(2).replace('\n', ' '), False


@dataclass
class ToolCall:
    doc: Path
    line: int
    script: str          # tools/X.py or train/run.py
    args: str            # the command line after the script, up to a comment or the next command
    typed: bool          # started by python or torchrun (a bare path may be another project's script)
    fenced: bool         # in a code block (inline code in prose may be a fragment of a command)

    @property
    def module(self) -> str:
        return self.script[:-3].replace('/', '.')

    @property
    def flags(self) -> list[str]:
        return [f.split('=')[0] for f in FLAG.findall(self.args)]

    @property
    def complete(self) -> bool:
        """A command as typed, without placeholders ([optional], A|B, ..., <x>, $VAR)."""
        return self.typed and self.fenced and not re.search(r'\.\.\.|…|[\[\]|<>${}*]', self.args)

    def __str__(self) -> str:
        return f'{rel(self.doc)}:{self.line}: {self.script}'


def tool_calls(path: Path):
    """Every mention of a tool in the doc's code, with what follows it on the command line."""
    for number, text, fenced in code_lines(path):
        for m in TOOL_CALL.finditer(text):
            script = m.group(1) or m.group(2).replace('.', '/') + '.py'
            typed = bool(m.group(2) or re.search(r'\b(python3?|torchrun)\b[^#;&|]*$', text[:m.start()]))
            rest = text[m.end():]
            end = COMMAND_END.search(rest)
            yield ToolCall(path, number, script, rest[:end.start()] if end else rest, typed, fenced)


def all_tool_calls() -> list[ToolCall]:
    return [call for doc in doc_files() for call in tool_calls(doc)]


@pytest.fixture(scope='module')
def tools_checked() -> tuple[dict, list[ToolCall], list]:
    """(options of each tool module, the complete commands, the parse error of each or None)."""
    modules = sorted({p.relative_to(REPO).with_suffix('').as_posix().replace('/', '.')
                      for p in [*(REPO / 'tools').glob('*.py'), REPO / 'train' / 'run.py']
                      if p.name != '__init__.py'})
    complete = [c for c in all_tool_calls() if c.complete and (REPO / c.script).exists()]
    request = {'modules': modules, 'commands': [[c.module, shlex.split(c.args)] for c in complete]}
    done = subprocess.run([sys.executable, '-c', _CAPTURE], input=json.dumps(request), cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'PYTHONPATH': str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return answer['options'], complete, answer['errors']


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f'README.md is {size} bytes; the limit is {README_LIMIT}: move detail to docs/'


def test_relative_links_point_to_existing_files_and_headings():
    problems = []
    for doc in doc_files():
        for number, target in links(doc):
            if re.match(r'^[a-z][a-z0-9+.-]*:', target, re.I):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition('#')
            dest = (doc.parent / file_part).resolve() if file_part else doc
            where = f'{rel(doc)}:{number}: {target}'
            if not dest.exists():
                problems.append(f'{where}: no such file')
            elif anchor and dest.suffix == '.md' and anchor not in anchors(dest):
                problems.append(f'{where}: no heading with that anchor in {rel(dest)}')
    assert not problems, '\n'.join(problems)


def test_tool_commands_use_only_options_the_tools_accept(tools_checked):
    options, _, _ = tools_checked
    problems, checked = [], 0
    for call in all_tool_calls():
        if not (REPO / call.script).exists():
            if call.typed:
                problems.append(f'{call}: no such tool')
            continue
        accepted = options.get(call.module)
        if accepted is None:
            problems.append(f'{call}: could not read its argparse parser')
            continue
        checked += 1
        problems += [f'{call}: {flag} is not an option of {call.script} (see --help)'
                     for flag in call.flags if flag not in accepted]
    assert not problems, '\n'.join(problems)
    assert checked >= 10, f'only {checked} tool commands found in the docs: is the extraction broken?'


def test_complete_commands_parse_as_typed(tools_checked):
    """Required options, choices and value types too, for every command in a code block that has no
    placeholder in it."""
    _, complete, errors = tools_checked
    problems = [f"{call} {call.args.strip()}: {re.sub(r'^.*?error: ', '', error)}"
                for call, error in zip(complete, errors) if error]
    assert not problems, '\n'.join(problems)
    assert len(complete) >= 10, f'only {len(complete)} complete commands found: is the extraction broken?'


def readme_setup_commands() -> list[str]:
    """The README's set-up commands: code lines that start with `pip install`."""
    return [text.strip() for _, text, fenced in code_lines(README) if fenced and text.strip().startswith('pip install')]


def test_ci_runs_the_readme_test_command():
    ci = [line.strip() for line in (REPO / '.ci' / 'run').read_text().splitlines()
          if 'pytest' in line and not line.lstrip().startswith('#')]
    readme = [c for c in readme_setup_commands() if 'python -m pytest' in c]
    assert len(ci) == 1, f'.ci/run should run one pytest command, found {ci}'
    assert readme == ci, f'README test command {readme} != .ci/run {ci}'


def test_readme_setup_installs_and_runs_the_demo():
    """The demo command installs what the test command installs, less the test extra."""
    test, = [c for c in readme_setup_commands() if 'python -m pytest' in c]
    demo = [c for c in readme_setup_commands() if c.endswith('&& python tools/demo.py')]
    assert len(demo) == 1, f'README should have one "pip install ... && python tools/demo.py" command: {demo}'
    expected = test.split(' && python -m pytest')[0].replace(',test]', ']') + ' && python tools/demo.py'
    assert demo[0] == expected, f'README demo command {demo[0]!r}; expected {expected!r}'
