"""Alembic environment for the service's own migrations (loaded by Alembic, not imported).

Online: the connection comes from ``config.attributes["connection"]`` — the one holding the migration
lock (cds_service.migrations.upgrade); with a URL only (plain ``alembic`` use by a developer), an engine
is made here. Offline (``cds-service migrate --sql``): SQL is written for the URL's dialect.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from cds_service.migrations import target_metadata

config = context.config
metadata = target_metadata()


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: batch mode recreates the table when a revision needs it.
        render_as_batch=True,
        **kwargs,
    )


if context.is_offline_mode():
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    else:
        engine = create_engine(config.get_main_option("sqlalchemy.url"))
        with engine.connect() as connection:
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
        engine.dispose()
