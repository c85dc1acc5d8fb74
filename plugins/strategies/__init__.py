"""Built-in decoding strategies (one module per strategy; the file name is the registry key)."""
