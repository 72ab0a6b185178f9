"""``medsam3d serve``: interactive sessions over JSON lines, for the 3D Slicer module and other clients.

One request per line, one reply per line (``protocol.py`` has the format); ``worker.py`` answers requests from
``Session`` objects; ``transport.py`` carries them over stdin/stdout or a loopback TCP socket with a token.
"""

from .protocol import PROTOCOL_VERSION
from .worker import Worker

__all__ = ["PROTOCOL_VERSION", "Worker"]
