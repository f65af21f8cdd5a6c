"""Deployment on the coordinator's side: the SuperLink service, node registration, run submission.

``config`` (server.toml), ``superlink`` (``fedmodel server start``), ``submit`` (``fedmodel server
run``), ``flower`` (Flower's CLI tools, one way), ``processes`` (supervised children, logs, PIDs)
and ``grid`` (the ServerApp's faster reply polling in deployment).
"""
