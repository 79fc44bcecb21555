"""A small file-storage service whose table names come from settings read at import time."""
