"""Storage: SQLAlchemy 2 models, the async engine, repositories and Alembic migrations."""
