"""The command line (`python -m broker`, `dlnuf`): serve, migrate, registry apply, keys, request, demo, log.

The top of the house: it may import any package below it, and nothing imports it.
"""
