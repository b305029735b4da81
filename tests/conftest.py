"Shared by the tests: a fresh PostgreSQL database, dropped afterwards."
import os
from contextlib import contextmanager

import pytest
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("MLOPS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def fresh_database(prefix:str):
    "A new, empty PostgreSQL database's URL (sqlalchemy); the test is skipped, saying why, when no server answers."
    import psycopg
    try: admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as e: pytest.skip(f"no PostgreSQL answers at {PG_URL} (set MLOPS_TEST_POSTGRES_URL): {e}")
    name = f"{prefix}_{os.getpid()}"
    admin.execute(f"drop database if exists {name} with (force)")
    admin.execute(f"create database {name}")
    try: yield make_url(PG_URL).set(database=name)
    finally:
        admin.execute(f"drop database if exists {name} with (force)")
        admin.close()
