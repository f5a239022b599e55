"""`python -m launch run ...` is `drivestack run ...`."""

from launch.cli import app

app(prog_name="python -m launch")
