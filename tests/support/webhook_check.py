"""The README's five lines that verify a signed webhook, run as a receiver would run them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- webhook-verification: tests/support/webhook_check.py runs this block -->"


def readme_snippet() -> str:
    """The python block right after MARKER in README.md."""
    text = README.read_text()
    assert MARKER in text, f"README.md lost {MARKER}"
    found = re.search(r"```python\n(.*?)```", text[text.index(MARKER):], re.DOTALL)
    assert found is not None, "no python block after the marker"
    return found.group(1)


def readme_verifies(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Run the README's block with `secret`, `headers` and the raw `body`; its `ok`."""
    namespace: dict = {"secret": secret, "headers": headers, "body": body}
    exec(readme_snippet(), namespace)  # noqa: S102 (our own README, on purpose)
    return namespace["ok"] is True
