"""Paths an operator names (a state file, a dead-letter file, a backup, a file to replay): what is there."""

from pathlib import Path

# What is said of a path that names `special` things: each command then says what to name instead.
NO_FILE = "it is no file (a device, a pipe or a socket)"


def special(path: Path) -> bool:
    """Whether something that is neither a regular file nor a directory is at `path` (a device such as
    /dev/null, a pipe, a socket): nothing a file's writer may rename, replace or make a journal beside."""
    return path.exists() and not path.is_file() and not path.is_dir()
