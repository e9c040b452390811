"""What the assistant sees: camera frames, screen captures and dropped or pasted images."""
