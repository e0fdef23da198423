// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";
import {ERC20Capped} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Capped.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title MeshToken — the unit that is staked, escrowed and earned on Meshmarket.
/// @notice 6 decimals. The supply is capped at 2^64-1 base units so that every balance the
///         registry and market keep fits a uint64 field; that is what lets a provider's stake,
///         lock, earnings and price share ONE storage slot (see docs/PROTOCOL.md, "Gas").
///         Minting is the owner's (the local testnet faucet); anyone may burn their own tokens
///         (the registry burns slashed stake).
contract MeshToken is ERC20, ERC20Burnable, ERC20Capped, Ownable {
    constructor(address initialOwner)
        ERC20("Meshmarket Token", "MESH")
        ERC20Capped(type(uint64).max)
        Ownable(initialOwner)
    {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }

    function _update(address from, address to, uint256 value) internal override(ERC20, ERC20Capped) {
        super._update(from, to, value);
    }
}
