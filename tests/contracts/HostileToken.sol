// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";

/// @title HostileToken — TEST ONLY. An ERC-20 that, on every transfer, calls back into a target
///        (the market or registry) with preset calldata, to prove reentrancy is refused.
contract HostileToken is ERC20, ERC20Burnable {
    address public target;
    bytes public payload;
    bool public armed;
    uint256 public attempts;
    bool public lastReentrySucceeded;
    bytes public lastRevertData;

    constructor() ERC20("Hostile", "HOST") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function arm(address target_, bytes calldata payload_) external {
        target = target_;
        payload = payload_;
        armed = true;
    }

    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        if (armed) {
            armed = false; // one attempt per arming, so the attack cannot loop
            attempts += 1;
            (bool ok, bytes memory data) = target.call(payload);
            lastReentrySucceeded = ok;
            lastRevertData = data;
        }
    }
}
