"""fedmodel: privacy-preserving federated learning on Flower with Opacus DP-SGD.

Data path: data -> model -> local DP training -> seal -> relay -> open -> aggregate -> ledger
-> report.
"""

__version__ = "0.1.0"
