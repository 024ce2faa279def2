"""One agent process: the wire protocol, the pure core, the journal, the worker, the loop.

``daemon`` owns the sockets and carries out what ``core`` decides; ``core`` and ``tasks``
are pure (messages and worker events in, effects out) and tested without sockets.
"""
