"""A safety shield for a learned planner (shielded RL, Alshiekh et al., AAAI 2018): the
policy proposes a meta action, the shield lets it through unless the rule-based planner's
own safety checks, on the same scene, say it is unsafe, and then substitutes the nearest
safe action.

- A lane change goes through only when the rule planner would call the lane free
  (`RulePlanner.lane_free`: nothing remembered beside the ego, room ahead to merge; the
  shorter "urgent" gap only when the ego lane is blocked) and the ego is settled in its
  lane past the warm-up; otherwise it becomes a speed action.
- A lane change under way is steered back when something shows up beside the ego in the
  lane it moves to (the rule planner's abort).
- The target speed may not go above the rule planner's safe speed (IDM/Gipps in the ego
  lane and the target lane, stopping before pedestrians): FASTER becomes IDLE at the
  bound, and above it any action becomes SLOWER.

Everything else (when to change lanes, how fast to drive below the safe speed) stays the
policy's. The shield keeps its own copy of the controller's target lane and speed from
the actions it lets through, so it must see every decision of an episode (`reset` at the
episode's start).
"""

from __future__ import annotations

from planning.rule_based import MAX_TARGET_FACTOR, RuleParams, RulePlanner
from planning.scene import Scene
from sim.actions import FASTER, IDLE, LANE_LEFT, LANE_RIGHT, META_ACTIONS, SLOWER, SPEED_STEP


class SafetyShield(RulePlanner):
    """`filter(scene, proposed)` -> the action to execute (see module doc)."""

    def __init__(self, params: RuleParams | None = None) -> None:
        super().__init__(params, lane_changes=True)
        self.vetoed = 0
        """Actions replaced since `reset`."""

    def reset(self) -> None:
        super().reset()
        self.vetoed = 0

    def filter(self, scene: Scene, proposed: int) -> int:
        a = int(proposed)
        if not 0 <= a < len(META_ACTIONS):
            raise ValueError(f"meta action {proposed!r} out of range 0..{len(META_ACTIONS) - 1}")
        self._observe(scene)
        chosen = self._choose(scene, a)
        self.vetoed += int(chosen != a)
        return chosen

    def advise(self, scene: Scene, proposed: int) -> int:
        """The action `filter` would execute instead of `proposed`, while `proposed` is
        what runs: the shield as an adviser (training with `shield: advise`, where the
        policy pays for each decision the shield would veto but drives bare). Its copy of
        the controller follows `proposed` (and the scene's own target speed when known),
        so its next verdicts judge the car as it really drives."""
        a = int(proposed)
        if not 0 <= a < len(META_ACTIONS):
            raise ValueError(f"meta action {proposed!r} out of range 0..{len(META_ACTIONS) - 1}")
        self._observe(scene)
        m = self.mem
        if scene.target_speed is not None:
            m.target_speed = float(scene.target_speed)
        kept = (m.target_speed, m.target_lane, m.origin_lane, m.since_change, m.leaving)
        chosen = self._choose(scene, a)
        m.target_speed, m.target_lane, m.origin_lane, m.since_change, m.leaving = kept
        self._follow(scene, a)
        self.vetoed += int(chosen != a)
        return chosen

    def _follow(self, scene: Scene, a: int) -> None:
        """Its copy of the controller after action `a` (as `sim.actions` moves the
        controller: a lane change retargets from the lane it steers to, within the road)."""
        m = self.mem
        assert m.target_speed is not None  # set by _observe
        if a in (LANE_LEFT, LANE_RIGHT):
            rel = 1 if a == LANE_LEFT else -1
            new = m.target_lane + rel
            exists = scene.left_lane if new > m.lane else scene.right_lane
            if new == m.lane:  # steered back
                m.target_lane, m.since_change = new, 0.0
            elif abs(new - m.lane) == 1 and exists:
                self._change(new - m.lane)
        elif a == SLOWER:
            m.target_speed = max(m.target_speed - SPEED_STEP, 0.0)
        elif a == FASTER:
            m.target_speed = min(m.target_speed + SPEED_STEP,
                                 MAX_TARGET_FACTOR * scene.speed_limit)

    def _choose(self, scene: Scene, a: int) -> int:
        m = self.mem
        abort = self._abort(scene)
        if abort is not None:
            return abort
        if a in (LANE_LEFT, LANE_RIGHT):
            rel = 1 if a == LANE_LEFT else -1
            # the rule planner's own bar: settled past the warm-up (neighbours beside the
            # ego are unseen until they pass it), a full merge gap; shorter only when the
            # ego lane is blocked
            urgent = self.lane_speed(scene, 0)[0] < scene.speed - self.params.urgent_decel
            if self._settled(scene, urgent) and self.lane_free(scene, rel, urgent):
                return self._change(rel)
            a = IDLE
        v_safe = self.desired_speed(scene)
        assert m.target_speed is not None  # set by _observe
        if m.target_speed > v_safe + 0.25 and m.target_speed > 0.0:
            a = SLOWER
        elif a == FASTER and m.target_speed + SPEED_STEP > v_safe + 0.25:
            a = IDLE
        if a == SLOWER:
            m.target_speed = max(m.target_speed - SPEED_STEP, 0.0)
        elif a == FASTER:
            m.target_speed = min(m.target_speed + SPEED_STEP,
                                 MAX_TARGET_FACTOR * scene.speed_limit)
        return a
