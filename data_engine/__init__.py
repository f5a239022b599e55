"""drivestack data_engine (built in a later issue)."""
