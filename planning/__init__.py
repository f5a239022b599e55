"""drivestack planning (built in a later issue)."""
