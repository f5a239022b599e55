"""drivestack simulator: a gymnasium driving world with exact ground truth."""
from sim.types import CLASS_NAMES
__all__ = ["CLASS_NAMES"]
