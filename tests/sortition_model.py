"""The SortitionTree library's Python twin and the driver of its test harness.

`TreeModel` mirrors contracts/src/SortitionTree.sol exactly (which leaf an owner gets, when a freed
leaf is reused, when the tree grows a level, and the tree as a block began), so a test can demand
that every draw the contract makes for a seed is the model's pick for that seed. `Harness` deploys
tests/contracts/SortitionHarness.sol from its committed artifact and drives it; `gas_by_size`
measures the library's gas per operation at a tree size, for tests/test_sortition.py (which asserts
bounds on it) and bench/sortition.py (which prints it). Nothing here needs pytest.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

from eth_utils import keccak, to_checksum_address

from meshmarket.contracts.compile import TESTS
from meshmarket.contracts.deploy import deploy_contract
from meshmarket.mesh.chain import RevertDecoder, send

ZERO = "0x" + "00" * 20
#: v2's weightCap (100 MESH): the largest weight the registry will put on a leaf.
WEIGHT_CAP = 100 * 10**6
#: Members added per `fill` transaction (~55k gas each: well inside Anvil's 30M block).
FILL_CHUNK = 256


def owner(i: int) -> str:
    """The i-th test owner: a plain address nobody holds a key for (the tree never calls it)."""
    return to_checksum_address((0x5000_0000 + i).to_bytes(20, "big"))


def seed(i: int, salt: bytes = b"") -> int:
    return int.from_bytes(keccak(salt + i.to_bytes(32, "big")), "big")


def levels(n: int) -> int:
    """Node slots a draw reads in a tree of n leaves: ⌈log₄ n⌉ (at least 1)."""
    height = 1
    while 4**height < n:
        height += 1
    return height


class TreeModel:
    """The tree as the library keeps it: leaf weights in leaf order, owners kept on freed leaves,
    a FIFO of freed leaves reusable only in a later block, and the tree as the current block began."""

    def __init__(self) -> None:
        self.weights: list[int] = []
        self.owners: list[str] = []
        self.leaf_of: dict[str, int] = {}
        self.freed: deque[tuple[int, int]] = deque()  # (leaf, block it was freed in)
        self.height = 0
        self.block: int | None = None  # the block of the latest change
        self.start: tuple[int, list[int]] = (0, [])  # (height, weights) as that block began

    def set(self, block: int, who: str, weight: int) -> None:
        if block != self.block:
            self.block, self.start = block, (self.height, list(self.weights))
        leaf = self.leaf_of.get(who)
        if leaf is None:
            if weight:
                self._add(block, who, weight)
        elif weight == 0:
            self.weights[leaf] = 0
            del self.leaf_of[who]
            self.freed.append((leaf, block))
        else:
            self.weights[leaf] = weight

    def _add(self, block: int, who: str, weight: int) -> None:
        if self.freed and self.freed[0][1] < block:
            leaf = self.freed.popleft()[0]
            self.weights[leaf], self.owners[leaf] = weight, who
        else:
            leaf = len(self.weights)
            if self.height == 0 or leaf == 4**self.height:
                self.height += 1
            self.weights.append(weight)
            self.owners.append(who)
        self.leaf_of[who] = leaf

    def view(self, block: int) -> tuple[int, list[int]]:
        """(height, leaf weights) as a draw in `block` reads them."""
        return self.start if block == self.block else (self.height, self.weights)

    def total(self, block: int | None = None) -> int:
        return sum(self.view(block)[1]) if block is not None else sum(self.weights)

    def members(self, block: int | None = None) -> int:
        return sum(1 for w in (self.view(block)[1] if block is not None else self.weights) if w)

    def weight_of(self, who: str) -> int:
        leaf = self.leaf_of.get(who)
        return 0 if leaf is None else self.weights[leaf]

    def pick(self, s: int, block: int) -> str:
        """The owner a draw with seed `s` made in `block` returns."""
        height, weights = self.view(block)
        total = sum(weights)
        if height == 0 or total == 0:
            return ZERO
        u, pos = s % total, 0
        for level in range(height, 0, -1):
            span = 4 ** (level - 1)  # leaves under each child of a node at this level
            for c in range(4):
                w = sum(weights[(4 * pos + c) * span:(4 * pos + c + 1) * span])
                if u < w or c == 3:
                    break
                u -= w
            pos = 4 * pos + c
        return self.owners[pos]


class Harness:
    """tests/contracts/SortitionHarness.sol deployed from its artifact, driven by one account."""

    def __init__(self, w3, account) -> None:
        self.art = json.loads((TESTS.build / "SortitionHarness.json").read_text())
        self.w3, self.account = w3, account
        self.decoder = RevertDecoder([self.art["abi"]])
        address, _ = deploy_contract(w3, account, self.art, decoder=self.decoder)
        self.c = w3.eth.contract(address=address, abi=self.art["abi"])
        self.f = self.c.functions

    def tx(self, fn) -> dict:
        return send(self.w3, self.account, fn, self.decoder, action=fn.fn_name)

    def mine(self) -> int:
        self.w3.provider.make_request("evm_mine", [])
        return self.w3.eth.block_number

    def drawn(self, receipt: dict) -> str:
        (event,) = self.c.events.Drawn().process_receipt(receipt)
        return event["args"]["who"]

    def fill(self, tree: int, count: int, first: int = 0, salt: int = 0, max_weight: int = WEIGHT_CAP) -> None:
        """Add owners first … first+count-1 with weights 1 … max_weight (keccak of salt and index)."""
        for start in range(0, count, FILL_CHUNK):
            n = min(FILL_CHUNK, count - start)
            self.tx(self.f.fill(tree, int(owner(first + start), 16), n, salt + start, max_weight))

    def set_gas(self, tree: int, who: str, weight: int) -> tuple[int, dict]:
        """(the library's gas for this set, the receipt): a transaction of its own."""
        receipt = self.tx(self.f.measureSet(tree, who, weight))
        (event,) = self.c.events.GasUsed().process_receipt(receipt)
        return event["args"]["gas"], receipt


@dataclass(frozen=True)
class GasRow:
    """The library's gas per operation in a tree of `members` leaves (all deterministic)."""

    members: int
    levels: int
    draw: int  # the most over 32 seeds, no node changed in the draw's block: one slot read per level
    draw_same_block: int  # the drawn path changed earlier in the draw's block: before[] read too
    set_first: int  # an existing member's new weight, its path's before[] slots possibly still empty
    set_steady: int  # the same member again in the next block: before[] slots already written
    set_tx: int  # the steady set as a whole transaction (21,000 base, calldata, the harness)
    add: int  # a new member (these trees are full: it grows a level)
    remove: int


def gas_by_size(h: Harness, tree: int, n: int) -> GasRow:
    """Fill tree `tree` with n members and measure each operation once (in this order)."""
    h.fill(tree, n, first=tree * 10**6)
    h.mine()
    draw = max(h.f.gasOfDraw(tree, seed(i, b"gas")).call()[0] for i in range(32))
    s = seed(0, b"path")
    target = h.f.draw(tree, s).call()
    w = h.f.weightOf(tree, target).call()
    set_first, receipt = h.set_gas(tree, target, w + 1)
    # In that block, a draw for the same seed walks the same path (the tree as the block began),
    # every node of which the set just stamped: the worst case, a before[] read per level.
    same_gas, same_who = h.f.gasOfDraw(tree, s).call(block_identifier=receipt["blockNumber"])
    assert same_who == target
    set_steady, receipt = h.set_gas(tree, target, w + 2)
    add, _ = h.set_gas(tree, owner(tree * 10**6 + n), 7)
    remove, _ = h.set_gas(tree, target, 0)
    return GasRow(n, levels(n), draw, same_gas, set_first, set_steady, receipt["gasUsed"], add, remove)
