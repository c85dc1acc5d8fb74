"""Built-in tasks (one module per task; the file name is the registry key)."""
