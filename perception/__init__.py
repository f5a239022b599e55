"""drivestack perception (built in a later issue)."""
