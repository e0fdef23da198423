"""Deploy the market: MeshToken (unless an existing token is given), ProviderRegistry (the vault)
and JobMarket, bound to each other, from the committed artifacts (no compiler needed).

Used by `mesh contracts deploy`, the local devnet, the tests and the benchmarks.
"""

from __future__ import annotations

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from web3 import Web3

from meshmarket.mesh.errors import ChainError

from meshmarket.mesh.chain import CONTRACT_NAMES, RevertDecoder, load_artifact, send
from meshmarket.mesh.config import Deployment, MarketParams


def get_create_address(sender: str, nonce: int) -> str:
    """The address a contract created by `sender` with `nonce` gets: keccak256(rlp([sender, nonce]))[12:]."""
    import rlp
    from eth_utils import keccak

    return to_checksum_address(keccak(rlp.encode([bytes.fromhex(sender[2:]), nonce]))[12:])


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
    # The registry and the market reference each other as immutables: the market is the deployer's
    # next contract after the registry, so its address is known before either exists.
    nonce = w3.eth.get_transaction_count(account.address, "pending")
    expected_market = get_create_address(account.address, nonce + 1)
    registry_address, registry_receipt = deploy_contract(
        w3, account, arts["ProviderRegistry"], token_address, expected_market, params.thaw_period,
        params.min_job_lock, params.collateral_ratio, params.weight_cap, params.max_lock_share, decoder=decoder,
    )
    market_address, market_receipt = deploy_contract(
        w3, account, arts["JobMarket"], registry_address, params.delivery_window, params.claim_window,
        params.reveal_window, params.dispute_window, params.court_phase, params.jury_size, params.min_jury_fee,
        decoder=decoder,
    )
    if market_address != expected_market:
        raise ChainError(f"the market was deployed at {market_address}, not at {expected_market} as the registry "
                         "expects (another transaction from the deployer in between?)", "deploy again")
    block = w3.eth.get_block(market_receipt["blockNumber"])
    return Deployment(
        chain_id=w3.eth.chain_id,
        rpc_url=rpc_url,
        token=token_address,
        registry=registry_address,
        market=market_address,
        block=market_receipt["blockNumber"],
        block_hash=block["hash"].to_0x_hex(),
        deployer=account.address,
        params=params,
        start_block=registry_receipt["blockNumber"],
    )
