"""Exceptions raised for bad user input.

Every error the user can fix is a :class:`CircuitscanError`: the CLI catches it once,
prints its message without a traceback and exits with status 2.
"""

from __future__ import annotations


class CircuitscanError(ValueError):
    """Bad input from the user: the message names what was wrong and what is valid."""


class ModelLoadError(CircuitscanError):
    """A model spec could not be resolved or loaded."""


class TaskError(CircuitscanError):
    """A task could not be built (unknown name, tokenizer mismatch, bad file)."""


class TrainingError(CircuitscanError):
    """The SAE diverged or its input was not finite."""


class CircuitscanWarning(UserWarning):
    """A run that completes but whose result may mislead (the CLI prints it as a warning)."""
