"""Decoding: the decode loop (``loop``), continuous batching over a slot table (``schedule``) and opening engines
through the runtimes' registry (``runtime``). The contracts they drive (engines, strategies) are in ``unmask.core``."""
