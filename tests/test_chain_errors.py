"""mesh.chain's typed refusals, on the session's real Anvil: a node's refusal becomes a typed error
established from the chain (the sender's balance against the transaction's cost), never from the
text of the node's message."""

from __future__ import annotations

import pytest
from eth_account import Account

from meshmarket.mesh.errors import ChainError, NoGas


@pytest.mark.parametrize("wei", [0, 1_000], ids=["no-eth", "too-little-eth"])
def test_a_sender_that_cannot_pay_for_gas_gets_no_gas(market, wei):
    poor = Account.create()
    if wei:
        market.rpc("anvil_setBalance", [poor.address, hex(wei)])
    with pytest.raises(NoGas) as caught:
        market.chain.transact(poor, market.chain.token.functions.approve(market.chain.registry.address, 1))
    assert caught.value.code == "no_gas" and poor.address in caught.value.message


def test_a_funded_sender_refused_for_another_reason_is_not_called_poor(market):
    acct = market.consumer
    nonce = market.chain.w3.eth.get_transaction_count(acct.address)
    # A transaction with a nonce the node has already seen is refused for that, not for gas.
    fn = market.chain.token.functions.approve(market.chain.registry.address, 1)
    tx = fn.build_transaction({"from": acct.address, "nonce": nonce - 1 if nonce else 0,
                               "chainId": market.chain.chain_id, "gas": 100_000})
    signed = acct.sign_transaction(tx)
    from web3.exceptions import Web3RPCError

    from meshmarket.mesh.chain import node_refused

    with pytest.raises(Web3RPCError) as raw:
        market.chain.w3.eth.send_raw_transaction(signed.raw_transaction)
    err = node_refused(market.chain.w3, raw.value, "approve", acct.address, tx)
    assert isinstance(err, ChainError) and not isinstance(err, NoGas)
