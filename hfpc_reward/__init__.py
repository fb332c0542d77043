"""hfpc-reward: HFPC judges (BLIP reward model + product consistency) as reward functions."""
__version__ = "0.1.0"
