"""SortitionTree (contracts/src/SortitionTree.sol) through tests/contracts/SortitionHarness.sol on the
session's Anvil: draws in proportion to weight, zero weight never drawn, leaves removed and reused,
every draw equal to the Python model's pick (tests/sortition_model.py), a change invisible to draws
of its own block and visible from the next, 64-bit stamps (F9), and gas bounded by the tree's levels.

A view call at "latest" runs in the latest block: it reads the tree as that block began, so it
does not see that block's changes. Tests that mean "the next block" mine one first.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import subprocess
import time
import urllib.error

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshmarket.mesh.anvil import DEV_MNEMONIC, AnvilProcess, find_anvil, free_port, rpc_call
from meshmarket.mesh.chain import connect
from meshmarket.mesh.errors import ContractReverted
from meshmarket.mesh.keys import dev_account
from tests.sortition_model import ZERO, Harness, TreeModel, gas_by_size, levels, owner, seed

#: The harness is driven by a dev account no other fixture uses.
ACCOUNT = 19
MAX48 = 2**48 - 1
#: Fresh tree ids for the examples of the Hypothesis test (they share one chain snapshot).
FRESH_TREES = itertools.count(1000)


@pytest.fixture(scope="session")
def harness_session(anvil_node):
    return Harness(connect(anvil_node.url), dev_account(ACCOUNT))


@pytest.fixture
def h(harness_session):
    """The harness, with the chain reverted after the test (automine back on, whatever happened)."""
    w3 = harness_session.w3
    snap = w3.provider.make_request("evm_snapshot", [])["result"]
    try:
        yield harness_session
    finally:
        w3.provider.make_request("evm_setAutomine", [True])
        assert w3.provider.make_request("evm_revert", [snap])["result"] is True


def apply(h: Harness, model: TreeModel, tree: int, changes: list[tuple[str, int]]) -> int:
    """Make the changes in one transaction, in the contract and the model; the block they landed in."""
    receipt = h.tx(h.f.setMany(tree, [w for w, _ in changes], [x for _, x in changes]))
    for who, weight in changes:
        model.set(receipt["blockNumber"], who, weight)
    return receipt["blockNumber"]


def draws(h: Harness, tree: int, seeds: list[int], block="latest", batch: int = 2000) -> list[str]:
    out: list[str] = []
    for i in range(0, len(seeds), batch):
        out += h.f.drawMany(tree, seeds[i:i + batch]).call(block_identifier=block)
    return out


def chi_square_p(stat: float, df: int) -> float:
    """P(X ≥ stat) for X ~ χ²(df): 1 − P(df/2, stat/2), the regularized lower incomplete gamma by its series."""
    a, x = df / 2, stat / 2
    if x == 0:
        return 1.0
    term = total = 1 / a
    n = 0
    while term > total * 1e-16:
        n += 1
        term *= x / (a + n)
        total += term
    return max(0.0, 1 - total * math.exp(-x + a * math.log(x) - math.lgamma(a)))


# ############################################################################# draws

def test_draw_frequencies_are_proportional_to_weight(h):
    """16 members of weights 1 to 16 million (varied), 10,000 view draws with distinct seeds: the
    counts fit the weights (chi-square, 15 degrees of freedom, p > 0.001), and every draw is the
    model's pick for its seed. A member added and removed again, and one set to 0, never come up."""
    rng = random.Random(17)
    model, tree = TreeModel(), 1
    members = [(owner(i), (i + 1) * 10**6 + rng.randrange(10**6)) for i in range(16)]
    gone, never = owner(100), owner(101)
    apply(h, model, tree, [(gone, 5 * 10**6), *members[:9], (never, 0)])
    apply(h, model, tree, [(gone, 0), *members[9:]])
    block = h.mine()
    seeds = [rng.getrandbits(256) for _ in range(10_000)]
    assert len(set(seeds)) == len(seeds)
    got = draws(h, tree, seeds)
    assert got == [model.pick(s, block) for s in seeds]
    total = sum(w for _, w in members)
    assert h.f.total(tree).call() == total == model.total()
    counts = {who: 0 for who, _ in members}
    assert set(got) <= set(counts)  # never `gone`, `never` or nobody
    for who in got:
        counts[who] += 1
    stat = sum((counts[who] - len(seeds) * w / total) ** 2 / (len(seeds) * w / total) for who, w in members)
    p = chi_square_p(stat, len(members) - 1)
    print(f"chi-square {stat:.2f}, 15 df, p = {p:.3f}")
    assert p > 0.001


def test_zero_weight_is_never_drawn(h):
    """A whole subtree of removed members (leaves 4-7), a member set to 0 at once, and members of
    weight 1 among weights of 10^8: the zero ones never come up, and an empty tree draws nobody."""
    model, tree = TreeModel(), 2
    assert h.f.draw(tree, 1).call() == ZERO and h.f.total(tree).call() == 0
    everyone = [(owner(i), 1 if i % 5 == 0 else 10**8) for i in range(12)]
    apply(h, model, tree, everyone)
    zeroed = [owner(i) for i in (4, 5, 6, 7)]
    apply(h, model, tree, [(w, 0) for w in zeroed] + [(owner(50), 0)])
    block = h.mine()
    got = draws(h, tree, [seed(i) for i in range(4000)])
    assert got == [model.pick(seed(i), block) for i in range(4000)]
    assert not (set(got) & {*zeroed, owner(50), ZERO})
    assert h.f.node(tree, 1, 1).call()[0] == [0, 0, 0, 0]  # the subtree of leaves 4-7 weighs 0
    assert h.f.members(tree).call() == 8 == model.members()
    apply(h, model, tree, [(w, 0) for w, _ in everyone])
    h.mine()
    assert h.f.total(tree).call() == 0 and h.f.members(tree).call() == 0
    assert set(draws(h, tree, [seed(i) for i in range(200)])) == {ZERO}


def test_removing_and_re_adding(h):
    """A removed member re-added in the same block takes a new leaf (its old leaf is not reused in the
    block it was freed); a later newcomer reuses the freed leaf; weights and draws follow the model."""
    model, tree = TreeModel(), 3
    a, b, c, d = (owner(i) for i in range(4))
    apply(h, model, tree, [(a, 10), (b, 20), (c, 30)])
    assert [h.f.leafOf(tree, w).call() for w in (a, b, c)] == [1, 2, 3]
    apply(h, model, tree, [(b, 0), (b, 25)])
    assert h.f.leafOf(tree, b).call() == 4 and h.f.weightOf(tree, b).call() == 25
    apply(h, model, tree, [(d, 40)])
    assert h.f.leafOf(tree, d).call() == 2  # leaf 1, freed in an earlier block
    apply(h, model, tree, [(a, 0)])
    apply(h, model, tree, [(a, 15)])
    assert h.f.leafOf(tree, a).call() == 1  # its own old leaf 0, freed one block earlier
    block = h.mine()
    assert h.f.total(tree).call() == 15 + 25 + 30 + 40 == model.total()
    seeds = [seed(i, b"readd") for i in range(1000)]
    got = draws(h, tree, seeds)
    assert got == [model.pick(s, block) for s in seeds] and set(got) == {a, b, c, d}


def test_weights_are_bounded(h):
    """A leaf holds at most 2^48 - 1; a subtree sum past it (here when the tree grows a level above
    two maximal leaves) reverts instead of spilling into the neighbouring weight; owner 0 is refused."""
    tree = 4
    with pytest.raises(ContractReverted) as err:
        h.tx(h.f.set(tree, owner(0), MAX48 + 1))
    assert err.value.name == "WeightTooLarge"
    with pytest.raises(ContractReverted) as err:
        h.tx(h.f.set(tree, ZERO, 1))
    assert err.value.name == "ZeroOwner"
    h.tx(h.f.setMany(tree, [owner(i) for i in range(4)], [MAX48, MAX48, 1, 1]))
    with pytest.raises(ContractReverted) as err:
        h.tx(h.f.set(tree, owner(4), 1))
    assert err.value.name == "WeightOverflow"
    assert h.f.total(tree).call() == 2 * MAX48 + 2


OWNERS = [owner(i) for i in range(20)]
WEIGHTS = st.one_of(st.just(0), st.integers(1, 1000), st.integers(1, 2**43), st.sampled_from([1, 2**43]))
CHANGES = st.lists(st.tuples(st.sampled_from(OWNERS), WEIGHTS), min_size=1, max_size=6)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blocks=st.lists(CHANGES, min_size=1, max_size=8), draw_seeds=st.lists(st.integers(0, 2**256 - 1), min_size=4,
                                                                             max_size=4))
def test_random_changes_match_the_model(h, blocks, draw_seeds):
    """Random set/remove sequences (several changes per block, 20 owners: up to 3 levels, leaves freed
    and reused): after every block the total, the members and every weight equal the model's, and a
    draw in that block (the tree as it began) and in the next one each equal the model's pick."""
    model = TreeModel()
    tree = next(FRESH_TREES)
    for changes in blocks:
        block = apply(h, model, tree, changes)
        assert h.f.total(tree).call() == model.total()
        assert h.f.totalAtBlockStart(tree).call() == model.total(block)  # "latest" is `block`
        assert h.f.members(tree).call() == model.members()
        assert h.f.membersAtBlockStart(tree).call() == model.members(block)
        assert h.f.drawMany(tree, draw_seeds).call() == [model.pick(s, block) for s in draw_seeds]
        next_block = h.f.drawMany(tree, draw_seeds).call(block_identifier="pending")
        assert next_block == [model.pick(s, block + 1) for s in draw_seeds]
    assert [h.f.weightOf(tree, w).call() for w in OWNERS] == [model.weight_of(w) for w in OWNERS]


# ############################################################################# the block a change is made in

def test_a_change_and_a_draw_in_one_transaction(h):
    """In one transaction, a heavy newcomer, a removal, and a fifth member that grows the tree a level
    are each invisible to the draw that follows them; from the next block they count."""
    model, tree = TreeModel(), 5
    members = [(owner(i), 10 + i) for i in range(4)]
    apply(h, model, tree, members)
    heavy = owner(9)
    # Simulated for many seeds first (eth_call runs the transaction in the pending block): never heavy.
    for i in range(40):
        who = h.f.setThenDraw(tree, heavy, 10**12, seed(i, b"sim")).call(block_identifier="pending")
        assert who in {w for w, _ in members}
    receipt = h.tx(h.f.setThenDraw(tree, heavy, 10**12, seed(1)))
    model.set(receipt["blockNumber"], heavy, 10**12)  # the fifth leaf: the tree is now 2 levels
    assert h.f.header(tree).call()[0] == 2
    assert h.drawn(receipt) == model.pick(seed(1), receipt["blockNumber"]) != heavy
    block = h.mine()
    assert h.f.draw(tree, seed(2)).call() == model.pick(seed(2), block) == heavy  # 10^12 against 46
    receipt = h.tx(h.f.setThenDraw(tree, heavy, 0, seed(3)))
    model.set(receipt["blockNumber"], heavy, 0)
    # Removed in this transaction, still drawn in its block (its weight as the block began).
    assert h.drawn(receipt) == model.pick(seed(3), receipt["blockNumber"]) == heavy
    block = h.mine()
    seeds = [seed(i, b"after") for i in range(300)]
    got = draws(h, tree, seeds)
    assert heavy not in got and got == [model.pick(s, block) for s in seeds]


def test_two_transactions_in_one_block(h):
    """Automine off: one transaction makes a member heavy and removes another, a second one (same
    block, later) draws: it sees the tree as the block began. A draw in the next block sees the change."""
    model, tree = TreeModel(), 6
    a, b, c = owner(0), owner(1), owner(2)
    apply(h, model, tree, [(a, 1000), (b, 1000), (c, 1)])
    w3, acct = h.w3, h.account
    w3.provider.make_request("evm_setAutomine", [False])
    nonce = w3.eth.get_transaction_count(acct.address, "pending")
    hashes = []
    for i, fn in enumerate([h.f.setMany(tree, [c, a], [10**12, 0])] + [h.f.drawAndRecord(tree, seed(k)) for k in range(16)]):
        tx = fn.build_transaction({"from": acct.address, "nonce": nonce + i, "gas": 500_000, "chainId": w3.eth.chain_id})
        hashes.append(w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction))
    w3.provider.make_request("evm_mine", [])
    w3.provider.make_request("evm_setAutomine", [True])
    receipts = [w3.eth.get_transaction_receipt(x) for x in hashes]
    assert {r["blockNumber"] for r in receipts} == {receipts[0]["blockNumber"]}
    assert all(r["status"] == 1 for r in receipts)
    block = receipts[0]["blockNumber"]
    model.set(block, c, 10**12)
    model.set(block, a, 0)
    got = [h.drawn(r) for r in receipts[1:]]
    assert got == [model.pick(seed(k), block) for k in range(16)]
    assert c not in got  # 1 in 2,001 as the block began
    assert a in got  # removed in this block, still drawable in it
    receipt = h.tx(h.f.drawAndRecord(tree, seed(0)))
    assert h.drawn(receipt) == c == model.pick(seed(0), receipt["blockNumber"])


# ############################################################################# stamps (F9)

def _stale_before(h, model: TreeModel, tree: int) -> tuple[str, str]:
    """A one-node tree whose before[] slot is stale: a alone (a block), then b alone (the next)."""
    a, b = owner(0), owner(1)
    apply(h, model, tree, [(a, 10)])
    apply(h, model, tree, [(a, 0), (b, 10)])
    return a, b


def test_stamps_are_full_block_numbers_and_do_not_alias(h):
    """A node's stamp is the whole block number (64 bits). A stamp equal to the current block modulo
    2^24 (v2's tag) or 2^32 is not taken for the current block: the draw reads the node as it is,
    not its stale before[] slot. The chain cannot be mined 2^32 blocks in a test (anvil_mine took
    ~20 ms a block here: years), so the harness writes such a stamp and draws in the same transaction;
    with the stamp exactly the current block (the control) the stale slot is read, as it should be."""
    tree = 7
    a, b = _stale_before(h, TreeModel(), tree)
    (weights, stamp) = h.f.node(tree, 1, 0).call()
    assert weights == [0, 10, 0, 0] and stamp == h.w3.eth.block_number
    assert h.f.nodeBefore(tree, 1, 0).call()[0] == [10, 0, 0, 0]
    assert h.f.header(tree).call()[-1] == h.w3.eth.block_number
    for ahead in (2**24, 2**32, 2**40, 2**63):
        receipt = h.tx(h.f.aliasStampThenDraw(tree, 1, 0, ahead, seed(0)))
        assert h.drawn(receipt) == b, f"a stamp {ahead} blocks ahead was read as this block's"
        assert h.f.node(tree, 1, 0).call()[1] == (receipt["blockNumber"] + ahead) % 2**64
    receipt = h.tx(h.f.aliasStampThenDraw(tree, 1, 0, 0, seed(0)))
    assert h.drawn(receipt) == a


HIGH_BLOCK = 2**32 + 2**24 + 5


@pytest.fixture(scope="module")
def high_chain(tmp_path_factory):
    """A second Anvil whose chain starts at block 2^32 + 2^24 + 5 (a genesis file), with the harness."""
    genesis = {"config": {"chainId": 31337, **dict.fromkeys(
                   ("homesteadBlock", "eip150Block", "eip155Block", "eip158Block", "byzantiumBlock",
                    "constantinopleBlock", "petersburgBlock", "istanbulBlock", "berlinBlock", "londonBlock"), 0),
                   "shanghaiTime": 0, "cancunTime": 0},
               "number": hex(HIGH_BLOCK), "timestamp": hex(int(time.time())), "gasLimit": hex(30_000_000),
               "difficulty": "0x0", "alloc": {}}
    path = tmp_path_factory.mktemp("genesis") / "genesis.json"
    path.write_text(json.dumps(genesis))
    port = free_port()
    node = AnvilProcess(subprocess.Popen(
        [str(find_anvil()), "--host", "127.0.0.1", "--port", str(port), "--mnemonic", DEV_MNEMONIC, "--init", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), port)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                rpc_call(node.url, "eth_chainId", timeout=0.5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                assert time.monotonic() < deadline and node.proc.poll() is None, "the high Anvil did not start"
                time.sleep(0.05)
        yield Harness(connect(node.url), dev_account(0))
    finally:
        node.stop()


def test_past_two_to_the_32_blocks(high_chain):
    """On a chain past block 2^32 + 2^24: stamps are the whole block number, a change is invisible to
    a draw in its own block and visible in the next."""
    h, model, tree = high_chain, TreeModel(), 1
    a, b = _stale_before(h, model, tree)
    block = h.w3.eth.block_number
    assert block > HIGH_BLOCK
    assert h.f.node(tree, 1, 0).call()[1] == block and h.f.header(tree).call()[-1] == block
    receipt = h.tx(h.f.setThenDraw(tree, a, 10**9, seed(0)))
    model.set(receipt["blockNumber"], a, 10**9)
    assert h.drawn(receipt) == model.pick(seed(0), receipt["blockNumber"]) == b  # a weighed 0 as the block began
    block = h.mine()
    assert h.f.draw(tree, seed(0)).call() == model.pick(seed(0), block) == a  # 10^9 against 10


# ############################################################################# gas

#: Bounds from opcode prices (EIP-2929: a cold SLOAD is 2,100, an SSTORE to a warm nonzero slot 2,900,
#: a zero slot made nonzero 20,000). A draw makes one cold read per level plus two (the header and
#: the drawn leaf's owner), each with its share of computation (the mapping key's hash, the child
#: search, the call): DRAW_PER_READ. In a block that changed the drawn path it also reads before[]
#: at each level (BEFORE_READ). A set reads the owner's leaf and the header (SET_FIXED), then per
#: level reads and writes the node (2,100 + 2,900) and copies its old slot to before[] (2,100 +
#: 2,900: SET_PER_LEVEL with computation; or 22,100 when that before[] slot was never written:
#: SET_PER_LEVEL_FIRST).
DRAW_PER_READ, BEFORE_READ = 2_700, 2_200
SET_FIXED, SET_PER_LEVEL, SET_PER_LEVEL_FIRST = 5_000, 11_000, 28_000


@pytest.mark.parametrize("n", [16, 256, 4096])
def test_gas_is_bounded_by_levels(h, n):
    """Gas of a draw and of a set in trees of 16, 256 and 4,096 members (2, 4 and 6 levels): bounded
    by the levels (gas is deterministic: asserted, never time). bench/sortition.py prints the table."""
    row = gas_by_size(h, 100 + n, n)
    print(row)
    k = levels(n)
    assert k == {16: 2, 256: 4, 4096: 6}[n]
    assert row.draw <= (k + 2) * DRAW_PER_READ  # at 4,096: 8 reads, <= 21,600
    assert row.draw_same_block <= (k + 2) * DRAW_PER_READ + k * BEFORE_READ
    assert row.set_steady <= SET_FIXED + k * SET_PER_LEVEL
    assert row.set_first <= SET_FIXED + k * SET_PER_LEVEL_FIRST
