"""Shared, stage-independent pieces: config, images, preprocessing, models and the bundle format."""

import sys as _sys

from core.interrupt import exit_while_starting as _exit_while_starting
from core.interrupt import started_as_command as _started_as_command

# The first import of `core` comes early in every command, well before torch: from here on a Ctrl-C while
# the command starts is one line and exit 130 (core/interrupt.py), never a traceback out of an import.
if _started_as_command(_sys.argv[0]):
    _exit_while_starting()
