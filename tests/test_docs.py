"""Every ```python block of README.md and docs/*.md runs.

The blocks of one file run in order in one namespace, as a reader would type them
into one session, in a temporary working directory.  A block that needs data or a
download is marked in the Markdown by an HTML comment on the line before its fence,
``<!-- skip: needs the CIFAR-10 data -->``, and is skipped with that reason.  Shell
blocks (```bash, ```sh) and output (```text) are not run.
"""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```\s*(\S*)\s*$")
SKIP = re.compile(r"^<!--\s*skip:\s*(.*?)\s*-->$")
PYTHON = {"python", "py", "python3"}

# Blocks that fail today, by (file, first line of code): each must keep failing
# (strict) until the Markdown is fixed, so that the entry is then removed.
KNOWN_BROKEN = {}


def blocks(path):
    """(first line number, language, source, skip reason or None) of each fenced block."""
    found, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        prev = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        skip = SKIP.match(prev)
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{path.name}:{i + 1}: a ``` fence is never closed")
        found.append((i + 2, m.group(1).lower(), "\n".join(lines[i + 1:end]), skip and skip.group(1)))
        i = end + 1
    return found


def python_blocks():
    for path in FILES:
        for line, lang, source, skip in blocks(path):
            if lang in PYTHON:
                yield path, line, source, skip


CASES = list(python_blocks())
_sessions = {}   # file -> (namespace, working directory, blocks run so far)


def _run(path, line, source):
    # Blank lines first, so that tracebacks give the line in the Markdown file.
    code = compile("\n" * (line - 1) + source, str(path.relative_to(ROOT)), "exec")
    namespace, _, done = _sessions[path]
    exec(code, namespace)  # noqa: S102  (the documentation's own examples)
    done.append(line)


def _broken(path, source):
    first = next((ln for ln in source.splitlines() if ln.strip()), "")
    return KNOWN_BROKEN.get((path.name, first))


@pytest.mark.parametrize("path, line, source, skip", CASES,
                         ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, _, _ in CASES])
def test_markdown_python_block_runs(path, line, source, skip, tmp_path_factory, monkeypatch):
    if skip:
        pytest.skip(skip)
    if path not in _sessions:
        _sessions[path] = ({"__name__": "__main__"}, tmp_path_factory.mktemp(path.stem), [])
    _, workdir, done = _sessions[path]
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # Run alone (-k) or after a failure, the earlier blocks of the file have not all run: run them first.
    for p, n, src, sk in CASES:
        if p == path and n < line and n not in done and not sk and not _broken(p, src):
            _run(p, n, src)
    broken = _broken(path, source)
    if broken:
        with pytest.raises(Exception):   # noqa: B017  (fixed blocks fail here: remove them from KNOWN_BROKEN)
            _run(path, line, source)
        pytest.xfail(broken)
    _run(path, line, source)
