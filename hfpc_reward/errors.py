"""The user-error family: mistakes a user can fix, reported as one line (exit 2) and never as a traceback.

Every error a user's input can cause (a config key, a manifest, a model folder, a resume with other
settings, an impossible calibration target, ...) derives from `UsageError`; `hfpc`, `hfpc finetune` and
`hfpc eval` catch the family in one place (`hfpc_reward.cli.run_reporting_user_errors`). It derives from
ValueError so that library callers who catch ValueError keep working.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Something the user gave is wrong; the message says what and how to fix it, in one line."""


class CommandLineError(UsageError):
    """Command-line arguments that do not fit together (the message says which to give instead)."""
