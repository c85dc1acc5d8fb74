"""unmask.plugins: built-in tasks, backbones, strategies and runtimes; one file per plugin, named after its key."""
