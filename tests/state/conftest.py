from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import small_filesystem


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A real filesystem of 12 MiB, mounted for the test (tmpfs): its disk can truly fill."""
    with small_filesystem(tmp_path / "disk", 12) as disk:
        yield disk
