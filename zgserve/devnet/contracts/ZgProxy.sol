// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.22;

import {ERC1967Proxy} from "@openzeppelin/contracts/proxy/ERC1967/ERC1967Proxy.sol";

/// @notice Fronts one official 0G implementation (LedgerManager or InferenceServing), as the
/// live network does: the implementations disable their initializers in the constructor, so
/// the state lives behind a proxy that runs `initialize` through `data` at deployment.
contract ZgProxy is ERC1967Proxy {
    constructor(address implementation, bytes memory data) payable ERC1967Proxy(implementation, data) {}
}
