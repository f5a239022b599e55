"""drivestack launch: the `drivestack` CLI and the YAML launch files of its jobs.

Nothing imports `launch`; it wires the other packages together (see DESIGN.md).
"""

from launch.config import LaunchConfigError, RunConfig, load_launch

__all__ = ["LaunchConfigError", "RunConfig", "load_launch"]
