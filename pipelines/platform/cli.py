"""``citylake platform``: what a deployment's init service runs (docker-compose.yml), and sample sources."""

from __future__ import annotations

import typer

platform_app = typer.Typer(no_args_is_help=True, help="The production platform: init steps and sample source servers.")
