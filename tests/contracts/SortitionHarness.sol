// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {SortitionTree} from "contracts/src/SortitionTree.sol";

/// @title SortitionHarness — TEST ONLY. Exposes the SortitionTree library over numbered trees, with
///        the hooks tests/test_sortition.py and bench/sortition.py need: batches of changes in one
///        transaction, a change and a draw in one transaction, gas measured around one call, and a
///        raw stamp setter (F9: the chain cannot be mined past 2³² blocks in a test).
contract SortitionHarness {
    using SortitionTree for SortitionTree.Tree;

    mapping(uint256 => SortitionTree.Tree) internal trees;

    event Drawn(uint256 indexed tree, address who);
    event GasUsed(uint256 gas);

    // ---------------------------------------------------------------- the library's API

    function set(uint256 tree, address owner, uint256 weight) external {
        trees[tree].set(owner, weight);
    }

    function remove(uint256 tree, address owner) external {
        trees[tree].remove(owner);
    }

    function draw(uint256 tree, uint256 seed) external view returns (address) {
        return trees[tree].draw(seed);
    }

    function total(uint256 tree) external view returns (uint256) {
        return trees[tree].total();
    }

    function totalAtBlockStart(uint256 tree) external view returns (uint256) {
        return trees[tree].totalAtBlockStart();
    }

    function members(uint256 tree) external view returns (uint256) {
        return trees[tree].members();
    }

    function membersAtBlockStart(uint256 tree) external view returns (uint256) {
        return trees[tree].membersAtBlockStart();
    }

    function weightOf(uint256 tree, address owner) external view returns (uint256) {
        return trees[tree].weightOf(owner);
    }

    // ---------------------------------------------------------------- batches

    /// Several changes in one transaction (so in one block), in order.
    function setMany(uint256 tree, address[] calldata owners, uint256[] calldata weights) external {
        SortitionTree.Tree storage t = trees[tree];
        for (uint256 i; i < owners.length; ++i) {
            t.set(owners[i], weights[i]);
        }
    }

    /// Add `count` owners address(first + i), weight 1 + keccak(seed, i) % maxWeight: big trees fast.
    function fill(uint256 tree, uint160 first, uint256 count, uint256 seed, uint256 maxWeight) external {
        SortitionTree.Tree storage t = trees[tree];
        for (uint256 i; i < count; ++i) {
            t.set(address(first + uint160(i)), 1 + uint256(keccak256(abi.encode(seed, i))) % maxWeight);
        }
    }

    /// Many draws in one call, one per seed.
    function drawMany(uint256 tree, uint256[] calldata seeds) external view returns (address[] memory who) {
        SortitionTree.Tree storage t = trees[tree];
        who = new address[](seeds.length);
        for (uint256 i; i < seeds.length; ++i) {
            who[i] = t.draw(seeds[i]);
        }
    }

    // ---------------------------------------------------------------- same block

    /// Change the tree, then draw, in one transaction: the draw must not see the change.
    function setThenDraw(uint256 tree, address owner, uint256 weight, uint256 seed) external returns (address who) {
        trees[tree].set(owner, weight);
        who = trees[tree].draw(seed);
        emit Drawn(tree, who);
    }

    /// A draw made by a transaction, recorded in its receipt.
    function drawAndRecord(uint256 tree, uint256 seed) external returns (address who) {
        who = trees[tree].draw(seed);
        emit Drawn(tree, who);
    }

    // ---------------------------------------------------------------- inspection and hooks

    function blockNumber() external view returns (uint256) {
        return block.number;
    }

    function header(uint256 tree) external view returns (SortitionTree.Header memory) {
        return trees[tree].header;
    }

    function leafOf(uint256 tree, address owner) external view returns (uint256) {
        return trees[tree].leafOf[owner];
    }

    /// A node's raw slot: its four child weights and its stamp.
    function node(uint256 tree, uint256 height, uint256 pos) external view returns (uint48[4] memory w, uint64 stamp) {
        return _unpack(trees[tree].nodes[(height << 32) | pos]);
    }

    function nodeBefore(uint256 tree, uint256 height, uint256 pos)
        external
        view
        returns (uint48[4] memory w, uint64 stamp)
    {
        return _unpack(trees[tree].before[(height << 32) | pos]);
    }

    /// F9 hook: overwrite a node's stamp with block.number + ahead (an alias of this block modulo
    /// 2²⁴ or 2³² when `ahead` is a multiple of it), then draw in the same transaction.
    function aliasStampThenDraw(uint256 tree, uint256 height, uint256 pos, uint64 ahead, uint256 seed)
        external
        returns (address who)
    {
        SortitionTree.Tree storage t = trees[tree];
        uint256 key = (height << 32) | pos;
        uint256 stamp = uint64(block.number) + uint256(ahead);
        t.nodes[key] = (t.nodes[key] & ((1 << 192) - 1)) | (uint256(uint64(stamp)) << 192);
        who = t.draw(seed);
        emit Drawn(tree, who);
    }

    /// The library's gas for one draw (the slots it reads are cold: a fresh call).
    function gasOfDraw(uint256 tree, uint256 seed) external view returns (uint256 used, address who) {
        SortitionTree.Tree storage t = trees[tree];
        used = gasleft();
        who = t.draw(seed);
        used -= gasleft();
    }

    /// The library's gas for one set, recorded in the receipt (GasUsed).
    function measureSet(uint256 tree, address owner, uint256 weight) external {
        SortitionTree.Tree storage t = trees[tree];
        uint256 used = gasleft();
        t.set(owner, weight);
        emit GasUsed(used - gasleft());
    }

    function _unpack(uint256 s) private pure returns (uint48[4] memory w, uint64 stamp) {
        for (uint256 c; c < 4; ++c) {
            w[c] = uint48(s >> (48 * c));
        }
        stamp = uint64(s >> 192);
    }
}
