"""Shared, stage-independent pieces: config, images, preprocessing, models and the bundle format."""

import sys as _sys

from core.interrupt import started_as_command as _started_as_command
from core.interrupt import take_over_start as _take_over_start

# The first import of `core` comes early in every command, well before torch: from here on a Ctrl-C while
# the command starts is one line and exit 130 (core/interrupt.py), never a traceback out of an import.
if _started_as_command(_sys.argv[0]):
    _take_over_start()
