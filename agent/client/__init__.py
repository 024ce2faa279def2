"""The client library and the ``dedgeai`` command line: no torch on these paths."""
