"""The errors a run ends with in one line: bad input, a diverged training, a lost rank.

Each message is one line that names what went wrong and where (the file, the flag, the
rank), so the command line prints it as is (``biounet: error: ...``) without a traceback.
This module imports nothing of biounet: every other module may raise these.

- :class:`InputError` (a ``ValueError``): a file, folder or setting the user gave is
  unusable; the message names the file and the problem.
- :class:`TrainingDiverged` (a ``ValueError``): the training loss became NaN or infinite.
- :class:`RankLost` (a ``RuntimeError``): under torchrun, another rank stopped or never
  answered.
"""


class InputError(ValueError):
    """Bad user input. The message is one line that names the file and the problem."""


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: the run stops with a one-line message."""


class RankLost(RuntimeError):
    """Another rank stopped or never answered: the run ends with one line."""
