"""Built-in backbones (one module per backbone; the file name is the registry key)."""
