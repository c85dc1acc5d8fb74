"""An example third-party unmask strategy package."""
