"""Wheel build hook: the installed package orchestra_sdk/ gets orchestra_sdk.py as its __init__.py.

Here rather than as `force-include` in pyproject.toml because hatchling copies force-included
files into editable installs too, where the copy would hide the repository's live module.
"""

from __future__ import annotations

from typing import Any, Dict

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class ModuleAsPackageHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: Dict[str, Any]) -> None:
        if version == "standard":  # an editable install puts the repository on sys.path instead
            build_data["force_include"]["orchestra_sdk.py"] = "orchestra_sdk/__init__.py"
