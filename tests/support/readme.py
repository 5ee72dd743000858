"""README.md as the tests read it: the whole text, and the app and the aiohttp-security recipe of its
section for library users."""

from __future__ import annotations

import re

from support.paths import REPO_ROOT

SECTION = "## Using the store in your own aiohttp app"


def readme() -> str:
    return (REPO_ROOT / "README.md").read_text()


def readme_blocks() -> list[str]:
    """The Python blocks of the section for library users, in order."""
    section = readme().split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def readme_app() -> str:
    """The section's app: its one Python block that defines create_app."""
    apps = [block for block in readme_blocks() if "async def create_app(" in block]
    assert len(apps) == 1, "the section has exactly one Python block with the app"
    return apps[0]


def readme_security() -> str:
    """The section's aiohttp-security recipe: its one Python block that imports the extra."""
    recipes = [block for block in readme_blocks() if "aiohttp_session_postgres.security" in block]
    assert len(recipes) == 1, "the section has exactly one Python block with the aiohttp-security recipe"
    return recipes[0]
