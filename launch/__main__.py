"""`python -m launch run ...` is `drivestack run ...`."""

import sys

from launch.cli import app
from launch.entry import normalize

app(args=normalize(sys.argv[1:]), prog_name="python -m launch")
