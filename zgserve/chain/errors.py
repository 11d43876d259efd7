"""Chain errors: transport failures, reverts decoded into typed exceptions, failed transactions.

Reverts are decoded from the revert data the node returns (``eth_call``/``eth_estimateGas``
errors, or a failed receipt replayed with ``eth_call``):

* custom errors declared in either contract's ABI become :class:`ContractCustomError`, or the
  typed subclass registered under the error's name (arguments decoded and set as attributes,
  e.g. ``exc.available`` on :class:`InsufficientAvailableBalance`);
* ``Error(string)`` becomes :class:`RevertString` (``NotOwner`` for OpenZeppelin's
  "Ownable: caller is not the owner");
* ``Panic(uint256)`` becomes :class:`PanicError`.

All derive from :class:`ChainError`, itself a :class:`~zgserve.common.errors.ZgError`
(502, or 503 for :class:`RpcUnavailable`) so that the web layer maps them in one place.
"""

from __future__ import annotations

from typing import Any

from eth_abi.abi import decode

from zgserve.chain.abi import ContractAbis
from zgserve.common.errors import ZgError

ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")
PANIC_SELECTOR = bytes.fromhex("4e487b71")
OWNABLE_NOT_OWNER = "Ownable: caller is not the owner"


class ChainError(ZgError):
    """Base of every error raised by :mod:`zgserve.chain`."""

    status = 502
    code = "chain_error"
    type = "upstream_error"


class RpcUnavailable(ChainError):
    """The RPC endpoint could not be reached (after the policy's retries)."""

    status = 503
    code = "rpc_unavailable"


class RpcError(ChainError):
    """The node answered with a JSON-RPC error that is not a revert (nonce, funds, ...)."""

    code = "rpc_error"


class ReceiptTimeout(ChainError):
    """No receipt for ``tx_hash`` within the timeout; the transaction may still be mined."""

    code = "receipt_timeout"

    def __init__(self, tx_hash: str, timeout: float) -> None:
        super().__init__(f"no receipt for {tx_hash} within {timeout:.0f} s")
        self.tx_hash = tx_hash


class TransactionFailed(ChainError):
    """A mined transaction reverted and the reason could not be recovered (e.g. out of gas)."""

    code = "transaction_failed"

    def __init__(self, message: str, *, tx_hash: str) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash


class ContractRevert(ChainError):
    """A contract call reverted. ``tx_hash`` is set when a mined transaction failed."""

    code = "contract_revert"

    def __init__(self, message: str, *, data: bytes = b"", tx_hash: str | None = None) -> None:
        super().__init__(message)
        self.data = data
        self.tx_hash = tx_hash


class RevertString(ContractRevert):
    """``require``/``revert`` with a reason string."""

    def __init__(self, reason: str, *, data: bytes = b"", tx_hash: str | None = None) -> None:
        super().__init__(f"reverted: {reason}", data=data, tx_hash=tx_hash)
        self.reason = reason


class NotOwner(RevertString):
    """An owner-only function called by someone else."""


class PanicError(ContractRevert):
    """A Solidity ``Panic(uint256)`` (assertion, overflow, ...)."""

    def __init__(self, panic_code: int, *, data: bytes = b"", tx_hash: str | None = None) -> None:
        super().__init__(f"panic 0x{panic_code:02x}", data=data, tx_hash=tx_hash)
        self.panic_code = panic_code


class ContractCustomError(ContractRevert):
    """A custom error from the contracts' ABI; ``error_name`` and ``error_args`` hold it.

    Each argument is also an attribute (``exc.user``, ``exc.required``...).
    """

    def __init__(
        self, error_name: str, error_args: dict[str, Any], *, data: bytes = b"", tx_hash: str | None = None
    ) -> None:
        shown = ", ".join(f"{k}={v}" for k, v in error_args.items())
        super().__init__(f"{error_name}({shown})", data=data, tx_hash=tx_hash)
        self.error_name = error_name
        self.error_args = error_args
        for key, value in error_args.items():
            if not hasattr(ContractCustomError, key) and key not in {"data", "tx_hash"}:
                setattr(self, key, value)


# The errors callers are expected to handle, with their decoded arguments (spec §1.2-1.4).
class AccountNotExists(ContractCustomError):
    user: str
    provider: str


class AccountExists(ContractCustomError):
    user: str
    provider: str


class InsufficientAvailableBalance(ContractCustomError):
    available: int
    required: int


class InsufficientBalance(ContractCustomError):
    user: str


class TooManyRefunds(ContractCustomError):
    user: str
    provider: str


class LedgerNotExists(ContractCustomError):
    user: str


class LedgerExists(ContractCustomError):
    user: str


class ServiceNotExist(ContractCustomError):
    provider: str


class ServiceNotFound(ContractCustomError):
    serviceAddress: str


class InsufficientStake(ContractCustomError):
    provided: int
    required: int


class CannotAddStakeWhenUpdating(ContractCustomError):
    pass


class CannotRevokeWithNonZeroBalance(ContractCustomError):
    user: str
    provider: str
    balance: int


class MinimumDepositRequired(ContractCustomError):
    provided: int
    required: int


class ZeroAmountNotAllowed(ContractCustomError):
    pass


class MustWithdrawAllFundsFirst(ContractCustomError):
    remainingBalance: int


class LockTimeOutOfRange(ContractCustomError):
    lockTime: int
    min: int
    max: int


class AlreadyInitialized(ContractCustomError):
    pass


class TooManyProviders(ContractCustomError):
    requested: int
    maximum: int


class NoSettlementsProvided(ContractCustomError):
    pass


class TooManySettlements(ContractCustomError):
    count: int
    max: int


class LimitTooLarge(ContractCustomError):
    limit: int
    max: int


class CallerNotLedger(ContractCustomError):
    caller: str


class AdditionalInfoTooLong(ContractCustomError):
    pass


class DirectDepositsDisabled(ContractCustomError):
    pass


class CallFailed(ContractCustomError):
    pass


# Typed classes by contract error name; other ABI errors stay ContractCustomError.
TYPED_ERRORS: dict[str, type[ContractCustomError]] = {
    cls.__name__: cls
    for cls in (
        AccountNotExists,
        AccountExists,
        InsufficientAvailableBalance,
        InsufficientBalance,
        TooManyRefunds,
        LedgerNotExists,
        LedgerExists,
        ServiceNotExist,
        ServiceNotFound,
        InsufficientStake,
        CannotAddStakeWhenUpdating,
        CannotRevokeWithNonZeroBalance,
        MinimumDepositRequired,
        ZeroAmountNotAllowed,
        MustWithdrawAllFundsFirst,
        LockTimeOutOfRange,
        AlreadyInitialized,
        TooManyProviders,
        NoSettlementsProvided,
        TooManySettlements,
        LimitTooLarge,
        CallerNotLedger,
        AdditionalInfoTooLong,
        DirectDepositsDisabled,
        CallFailed,
    )
}


def decode_revert(data: bytes, abis: ContractAbis, *, tx_hash: str | None = None) -> ContractRevert:
    """Turn revert data into the most specific exception available."""
    selector = data[:4]
    try:
        if selector == ERROR_STRING_SELECTOR:
            (reason,) = decode(["string"], data[4:])
            cls = NotOwner if reason == OWNABLE_NOT_OWNER else RevertString
            return cls(reason, data=data, tx_hash=tx_hash)
        if selector == PANIC_SELECTOR:
            (panic_code,) = decode(["uint256"], data[4:])
            return PanicError(panic_code, data=data, tx_hash=tx_hash)
        error = abis.error_for(selector)
        if error is not None:
            custom = TYPED_ERRORS.get(error.name, ContractCustomError)
            return custom(error.name, error.decode_args(data), data=data, tx_hash=tx_hash)
    except Exception:  # malformed data: fall through to the raw form below
        pass
    shown = "0x" + data.hex() if data else "no data"
    return ContractRevert(f"execution reverted ({shown})", data=data, tx_hash=tx_hash)
