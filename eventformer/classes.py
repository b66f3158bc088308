"""Class names of the datasets eventformer knows, in one place (datasets, synth, export use them)."""

from __future__ import annotations

# DVS128 Gesture, 0-based labels (the release's label files are 1-based).
DVS_GESTURE_CLASSES = (
    "hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise",
    "right_arm_counter_clockwise", "left_arm_clockwise", "left_arm_counter_clockwise",
    "arm_roll", "air_drums", "air_guitar", "other_gestures",
)

#: ``--classes NAME`` of export: named class sets.
CLASS_SETS = {"dvs-gesture": DVS_GESTURE_CLASSES}
