"""Inputs the atheris fuzzer (fuzz/fuzz_rewrite.py) once broke the rewriter
with, and a bounded fuzzing run of our own in CI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from relay.config import Settings
from relay.parsing import parse_message
from relay.pipeline import MessageRefused, check_raw, check_structure
from relay.rewrite import Parties, RewriteError, Threading, rewrite_message

ROOT = Path(__file__).resolve().parent.parent
REGRESSIONS = sorted((ROOT / "tests" / "data" / "fuzz_regressions").glob("*.eml"))
PARTIES = Parties(("alice.real@sender.example",), "sellerxaliasxxxxxx@relay.example", "Shop",
                  ("bob.real@recipient.example",), "buyerxaliasxxxxxxx@relay.example", "mx.relay.example")


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_fuzz_regression(path):
    data = path.read_bytes()
    try:
        check_raw(data, Settings())
        message = parse_message(data)  # the relay's own parse, as in fuzz/fuzz_rewrite.py
        check_structure(message, Settings())
        out = rewrite_message(message, PARTIES, Threading("<f@mx.relay.example>")).data
    except (MessageRefused, RewriteError):
        return
    assert b"alice.real@sender.example" not in out.lower()
    assert all(len(line) <= 998 for line in out.split(b"\r\n"))
    assert b"\r" not in out.replace(b"\r\n", b"") and b"\n" not in out.replace(b"\r\n", b"")


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
def test_atheris_finds_nothing_in_a_bounded_run(tmp_path):
    work = tmp_path / "corpus"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_rewrite.py"), "-max_total_time=20", "-timeout=30", "-rss_limit_mb=2048",
         f"-artifact_prefix={tmp_path}/", str(work), str(ROOT / "fuzz" / "seeds")],
        capture_output=True, timeout=600, cwd=tmp_path)
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("timeout-*"))
    # A failure shows the input: add it to tests/data/fuzz_regressions/ with the fix.
    inputs = {c.name: c.read_bytes()[:3000] for c in crashes}
    assert result.returncode == 0 and not crashes, (result.stderr.decode(errors="replace")[-3000:], inputs)
