"""Policy transfer to another architecture: mapping by role and depth, then a measured re-fit to the budget."""

from autoprune.transfer.mapping import TransferResult, transfer_policy
from autoprune.transfer.refit import transfer

__all__ = ["TransferResult", "transfer", "transfer_policy"]
