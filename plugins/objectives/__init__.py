"""Built-in training objectives (one module per objective; the file name is the registry key)."""
