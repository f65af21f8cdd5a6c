"""Deployment on a site's side: ``fedmodel node start`` / ``status``.

``service`` supervises the SuperNode and the warm ClientApp ``launcher``; ``supernode_main`` is
Flower's SuperNode with a shorter idle poll; ``checks`` validates node.toml before anything
starts; ``status`` reads the pid file, the log and the ledger.
"""
