"""Alembic migrations, run with `lifecycle migrate`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from lifecycle.settings import Settings

HERE = Path(__file__).parent


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)
