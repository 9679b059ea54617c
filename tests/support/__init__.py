"""Test support code shared by several test modules (fixtures, fake servers, data builders)."""

from pathlib import Path

#: The repository, and the real traces beside it (`shared/data`, as on every CI machine).
REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
