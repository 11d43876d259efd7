"""zgserve: the Python provider stack for the 0G Compute Network."""

__version__ = "0.1.0"
