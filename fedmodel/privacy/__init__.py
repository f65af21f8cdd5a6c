"""Privacy accounting, the per-client ledger and the budget the data owner enforces."""
