"""README.md as the tests read it: the whole text, and the app of its section for library users."""

from __future__ import annotations

import re

from support.paths import REPO_ROOT

SECTION = "## Using the store in your own aiohttp app"


def readme() -> str:
    return (REPO_ROOT / "README.md").read_text()


def readme_app() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the section has exactly one Python block: the app"
    return blocks[0]
