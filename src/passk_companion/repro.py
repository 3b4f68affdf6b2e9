"""An alias of :mod:`passk_companion.runtime` (threads, seeds and paths) for the modules of
passk_companion.model that import it under this name. New code imports
:mod:`passk_companion.runtime`."""

from passk_companion.runtime import *  # noqa: F403
from passk_companion.runtime import __all__  # noqa: F401
