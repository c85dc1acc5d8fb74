"""Built-in runtimes (one module per runtime; the file name is the registry key)."""
