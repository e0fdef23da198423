"""Deploy the market: MeshToken (unless an existing token is given), ProviderRegistry (the vault)
and JobMarket, bound to each other, from the committed artifacts (no compiler needed).

Used by `mesh contracts deploy`, the local devnet, the tests and the benchmarks.
"""

from __future__ import annotations

from eth_account.signers.local import LocalAccount
from web3 import Web3

from mesh.chain import CONTRACT_NAMES, RevertDecoder, load_artifact, send
from mesh.config import Deployment, MarketParams


def deploy_contract(w3: Web3, account: LocalAccount, artifact: dict, *args,
                    decoder: RevertDecoder | None = None) -> tuple[str, dict]:
    """Deploy one contract from its artifact; (address, receipt)."""
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = send(w3, account, factory.constructor(*args), decoder or RevertDecoder([artifact["abi"]]),
                   action=f"deploy {artifact['contractName']}")
    return receipt["contractAddress"], receipt


def deploy(w3: Web3, account: LocalAccount, rpc_url: str, params: MarketParams | None = None,
           token_address: str | None = None) -> Deployment:
    """Deploy token (unless given), registry and market, and bind them. Returns the record to save."""
    params = params or MarketParams()
    arts = {n: load_artifact(n) for n in CONTRACT_NAMES}
    decoder = RevertDecoder([a["abi"] for a in arts.values()])
    if token_address is None:
        token_address, _ = deploy_contract(w3, account, arts["MeshToken"], account.address, decoder=decoder)
    registry_address, registry_receipt = deploy_contract(
        w3, account, arts["ProviderRegistry"], token_address, params.thaw_period, params.min_job_lock,
        params.collateral_ratio, decoder=decoder,
    )
    market_address, _ = deploy_contract(
        w3, account, arts["JobMarket"], registry_address, params.delivery_window,
        params.settle_window, params.commit_window, params.reveal_window, decoder=decoder,
    )
    registry = w3.eth.contract(address=registry_address, abi=arts["ProviderRegistry"]["abi"])
    bind = send(w3, account, registry.functions.bindMarket(market_address), decoder, action="bindMarket")
    block = w3.eth.get_block(bind["blockNumber"])
    return Deployment(
        chain_id=w3.eth.chain_id,
        rpc_url=rpc_url,
        token=token_address,
        registry=registry_address,
        market=market_address,
        block=bind["blockNumber"],
        block_hash=block["hash"].to_0x_hex(),
        deployer=account.address,
        params=params,
        start_block=registry_receipt["blockNumber"],
    )
