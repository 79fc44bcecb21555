"""A small FastAPI + async SQLAlchemy application, tested with pytest-dbguard."""
