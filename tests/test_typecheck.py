"""Type checking in CI: mypy over the package, configured by pyproject.toml's [tool.mypy].

Runs mypy in-process through its API from the repository root, so the `packages` the
config names resolve the same way as running `mypy` there by hand, and fails with
mypy's own report when it finds any error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[1]


def test_package_type_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml")])
    report = "\n".join(part for part in (stdout.strip(), stderr.strip()) if part)
    assert status == 0, f"mypy found type errors (exit status {status}):\n{report}"
