"""Async, typed access to the official 0G contracts on any EVM chain.

* :class:`ChainClient` (``client``): the RPC connection, reads, receipts, events, typed errors.
* :class:`Wallet` (``wallet``): sends as one key with a :class:`TxPolicy`; one nonce sequence
  per sender; ``sign_transaction`` / ``ChainClient.send_raw`` / ``wait_receipt`` for
  crash-safe flows.
* :class:`InferenceServing`, :class:`LedgerManager`: typed wrappers (``chain.inference(w)``,
  ``chain.ledger(w)``).
* :mod:`~zgserve.chain.eip712`: settlement signing and verification.
* :mod:`~zgserve.chain.types`, :mod:`~zgserve.chain.errors`: values and exceptions.
"""

from zgserve.chain.abi import ContractAbi, ContractAbis, DecodedEvent, load_contract_abis
from zgserve.chain.client import ChainClient
from zgserve.chain.config import (
    ANVIL_CHAIN_ID,
    INFERENCE_SERVICE_NAME,
    MAINNET_CHAIN_ID,
    TESTNET_CHAIN_ID,
    NetworkConfig,
    TxPolicy,
)
from zgserve.chain.eip712 import (
    recover_settlement_signer,
    settlement_digest,
    settlement_typed_data,
    sign_settlement,
)
from zgserve.chain.errors import (
    AccountNotExists,
    ChainError,
    ContractCustomError,
    ContractRevert,
    InsufficientAvailableBalance,
    LedgerNotExists,
    NotOwner,
    ReceiptTimeout,
    RevertString,
    RpcError,
    RpcUnavailable,
    ServiceNotExist,
    TooManyRefunds,
    TransactionFailed,
)
from zgserve.chain.inference import MAX_SETTLEMENTS_PER_CALL, InferenceServing
from zgserve.chain.ledger import MIN_LEDGER_BALANCE, MIN_TRANSFER_AMOUNT, LedgerManager
from zgserve.chain.tx import ContractCall, Receipt, SignedTx
from zgserve.chain.types import (
    Account,
    Ledger,
    Refund,
    Service,
    ServiceInfo,
    ServiceParams,
    SettlementPreview,
    SettlementResult,
    SettlementStatus,
    TEESettlementData,
)
from zgserve.chain.wallet import Wallet
from zgserve.common.tokens import EPHEMERAL_TOKEN_ID

__all__ = [
    "ANVIL_CHAIN_ID",
    "EPHEMERAL_TOKEN_ID",
    "INFERENCE_SERVICE_NAME",
    "MAINNET_CHAIN_ID",
    "MAX_SETTLEMENTS_PER_CALL",
    "MIN_LEDGER_BALANCE",
    "MIN_TRANSFER_AMOUNT",
    "TESTNET_CHAIN_ID",
    "Account",
    "AccountNotExists",
    "ChainClient",
    "ChainError",
    "ContractAbi",
    "ContractAbis",
    "ContractCall",
    "ContractCustomError",
    "ContractRevert",
    "DecodedEvent",
    "InferenceServing",
    "InsufficientAvailableBalance",
    "Ledger",
    "LedgerManager",
    "LedgerNotExists",
    "NetworkConfig",
    "NotOwner",
    "Receipt",
    "ReceiptTimeout",
    "Refund",
    "RevertString",
    "RpcError",
    "RpcUnavailable",
    "Service",
    "ServiceInfo",
    "ServiceNotExist",
    "ServiceParams",
    "SettlementPreview",
    "SettlementResult",
    "SettlementStatus",
    "SignedTx",
    "TEESettlementData",
    "TooManyRefunds",
    "TransactionFailed",
    "TxPolicy",
    "Wallet",
    "load_contract_abis",
    "recover_settlement_signer",
    "settlement_digest",
    "settlement_typed_data",
    "sign_settlement",
]
