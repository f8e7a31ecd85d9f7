"""The errors a run ends with in one line: bad input, a diverged training, a lost rank.

Each message is one line that names what went wrong and where (the file, the flag, the
rank), so the command line prints it as is (``biounet: error: ...``) without a traceback.
This module imports nothing of biounet: every other module may raise these.

- :class:`InputError` (a ``ValueError``): a file, folder or setting the user gave is
  unusable; the message names the file and the problem.
- :class:`TrainingDiverged` (a ``ValueError``): the training loss became NaN or infinite.
- :class:`RankLost` (a ``RuntimeError``): under torchrun, another rank stopped or never
  answered.
- :class:`Stopped`: a training run stopped by SIGTERM or SIGINT at a step boundary, with
  a checkpoint to resume from; :class:`Terminated`: SIGTERM anywhere else (raised like
  KeyboardInterrupt, so that every write in progress removes its temp file).
"""

import signal


class InputError(ValueError):
    """Bad user input. The message is one line that names the file and the problem."""


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: the run stops with a one-line message."""


class RankLost(RuntimeError):
    """Another rank stopped or never answered: the run ends with one line."""


class Stopped(Exception):
    """A run stopped by a signal after saving what it had done; ``code`` is the exit code
    shells expect for the signal (128 + its number: 143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.code = 128 + signum


class Terminated(BaseException):
    """SIGTERM, raised where the process is (as KeyboardInterrupt is for SIGINT)."""

    code = 128 + signal.SIGTERM
