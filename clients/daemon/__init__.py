"""Deployment on a site's side: ``fedmodel node start`` / ``status``.

``service`` supervises the SuperNode and the ClientApp ``launcher``, which runs only this
site's installed ClientApp (``code_gate`` checks each run's bundle); ``supernode_main`` is
Flower's SuperNode with a shorter idle poll; ``checks`` validates node.toml before anything
starts (files, a privacy cap); ``status`` reads the pid file, the log and the ledger.
"""
