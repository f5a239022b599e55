"""Render the sample frames the README shows (docs/img/*.png).

    python docs/make_figures.py            # writes docs/img/

Each condition is a fixed family + seed driven by the autopilot for a few seconds, so
the figures are reproducible byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import gymnasium as gym
import numpy as np

import sim  # noqa: F401 - registers the env ids
from launch.overlays import annotate
from sim.autopilot import Autopilot

OUT = Path(__file__).resolve().parent / "img"
# name -> (family, time of day, weather, scenario seed, steps driven)
SAMPLES = {
    "day": ("highway", "day", "clear", 3, 90),
    "dusk": ("rural", "dusk", "clear", 4, 120),
    "night": ("urban", "night", "clear", 5, 150),
    "fog": ("highway", "day", "fog", 6, 90),
    "rain": ("urban", "day", "rain", 7, 150),
}


def _write(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def drive(family: str, tod: str, weather: str, seed: int, steps: int) -> gym.Env:
    scenario = sim.family_config(family, time_of_day={tod: 1.0}, weather={weather: 1.0})
    env = gym.make(f"drivestack/{family.capitalize()}-v0", scenario=scenario,
                   render_mode="rgb_array")
    env.reset(seed=0, options={"scenario_seed": seed})
    pilot = Autopilot()
    for _ in range(steps):
        env.step(pilot.act(env.unwrapped.world))
    return env


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (family, tod, weather, seed, steps) in SAMPLES.items():
        env = drive(family, tod, weather, seed, steps)
        frame = env.unwrapped.frame
        _write(OUT / f"condition_{name}.png", frame.image)
        if name == "day":
            _write(OUT / "labels_day.png", annotate(frame.image, frame.ground_truth.as_dict()))
            _write(OUT / "human_view.png", env.render())
        print(f"{name}: {family} seed {seed}, {len(frame.ground_truth)} labelled objects")


if __name__ == "__main__":
    main()
