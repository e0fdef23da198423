// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title ProviderRegistry — who serves which model, at what price, with how much at stake;
///        and the one vault of the market's tokens.
/// @notice Holds providers' stake, thawing stake and earnings, and consumers' escrow and credit.
///         The market holds no tokens: a job's money moves by bookkeeping inside this contract,
///         never by a transfer per payee. Only the bound market may lock stake and escrow for a
///         job, release them, credit earnings and refunds, and slash. A provider's stake, locked
///         stake, earnings and price share one storage slot (the token's supply cap of 2^64-1
///         makes uint64 fields safe), so a job touches one slot per provider.
///         Invariant: token.balanceOf(this) == sum(stake) + sum(thawing) + sum(owed)
///                    + sum(credit) + sum(escrow of open jobs), and locked <= stake for every provider.
contract ProviderRegistry is ReentrancyGuardTransient {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    struct Account {
        uint64 stake; // active stake, including the locked part
        uint64 locked; // part of stake that backs open jobs: cannot be unstaked, can be slashed
        uint64 owed; // earnings waiting for withdrawEarnings()
        uint64 price; // price per output token, in token base units; 0 = never registered
    }

    struct Listing {
        bytes32 modelHash; // sha256 of the GGUF file; 0 = not offering any model
        bytes32 manifestHash; // keccak256 of the canonical signed manifest
    }

    struct Thaw {
        uint64 amount;
        uint64 readyAt;
    }

    IERC20 public immutable token;
    address public immutable deployer;
    /// Seconds between requestUnstake and withdrawStake.
    uint64 public immutable thawPeriod;
    /// Each job locks max(minJobLock, collateralRatio * maxTokens * price) of each provider's stake;
    /// that lock is what a dissenting provider loses.
    uint64 public immutable minJobLock;
    uint64 public immutable collateralRatio;

    address public market;

    mapping(address => Account) public accounts;
    mapping(address => Listing) public listings;
    mapping(address => Thaw) public thaws;
    /// Consumers' prepaid or refunded tokens; openJob spends it before pulling with transferFrom.
    mapping(address => uint256) public credit;

    event MarketBound(address indexed market);
    /// `endpoint` is the provider's libp2p multiaddr ending in /p2p/<peer id>: where consumers
    /// fetch the manifest. It is only logged, never stored; the peer id proves the address.
    event ProviderRegistered(
        address indexed provider, bytes32 indexed modelHash, bytes32 manifestHash, uint64 price, string endpoint
    );
    event ProviderDeregistered(address indexed provider);
    event Staked(address indexed provider, uint256 amount);
    event UnstakeRequested(address indexed provider, uint256 amount, uint64 readyAt);
    event StakeWithdrawn(address indexed provider, uint256 amount);
    event EarningsWithdrawn(address indexed provider, uint256 amount);
    event Slashed(address indexed provider, bytes32 indexed jobId, uint256 amount);
    event Deposited(address indexed consumer, uint256 amount);
    event CreditWithdrawn(address indexed consumer, uint256 amount);

    error NotDeployer();
    error MarketAlreadyBound();
    error OnlyMarket();
    error ZeroAmount();
    error ZeroHash();
    error ZeroPrice();
    error EndpointTooLong(uint256 length);
    error NotRegistered(address provider);
    error WrongModel(address provider);
    error PriceAboveCap(address provider, uint64 price, uint256 cap);
    error InsufficientFreeStake(address provider, uint256 free, uint256 needed);
    error NothingThawing();
    error StillThawing(uint64 readyAt);
    error NothingOwed();
    error NothingToWithdraw();
    error PayAboveEscrow(uint256 paid, uint256 escrow);

    modifier onlyMarket() {
        if (msg.sender != market) revert OnlyMarket();
        _;
    }

    constructor(IERC20 token_, uint64 thawPeriod_, uint64 minJobLock_, uint64 collateralRatio_) {
        token = token_;
        deployer = msg.sender;
        thawPeriod = thawPeriod_;
        minJobLock = minJobLock_;
        collateralRatio = collateralRatio_;
    }

    /// The registry and the market reference each other; the deployer binds the market once.
    function bindMarket(address market_) external {
        if (msg.sender != deployer) revert NotDeployer();
        if (market != address(0)) revert MarketAlreadyBound();
        market = market_;
        emit MarketBound(market_);
    }

    // ---------------------------------------------------------------- provider actions

    uint256 public constant MAX_ENDPOINT_BYTES = 256;

    /// Offer a model at a price, reachable at `endpoint`. Re-registering changes the offer for
    /// future jobs only: open jobs keep the price they were opened with (the market commits it
    /// in the job hash).
    function register(bytes32 modelHash, bytes32 manifestHash, uint64 price, string calldata endpoint) external {
        if (modelHash == bytes32(0) || manifestHash == bytes32(0)) revert ZeroHash();
        if (price == 0) revert ZeroPrice();
        if (bytes(endpoint).length > MAX_ENDPOINT_BYTES) revert EndpointTooLong(bytes(endpoint).length);
        accounts[msg.sender].price = price;
        listings[msg.sender] = Listing(modelHash, manifestHash);
        emit ProviderRegistered(msg.sender, modelHash, manifestHash, price, endpoint);
    }

    /// Stop being selectable for new jobs; open jobs are unaffected.
    function deregister() external {
        if (listings[msg.sender].modelHash == bytes32(0)) revert NotRegistered(msg.sender);
        delete listings[msg.sender];
        emit ProviderDeregistered(msg.sender);
    }

    function stake(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Account storage a = accounts[msg.sender];
        a.stake = (uint256(a.stake) + amount).toUint64();
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit Staked(msg.sender, amount);
    }

    /// Move free stake (not locked by open jobs) into the thawing queue. Locked stake can never
    /// thaw, so a provider cannot dodge the slash of a job it is serving by unstaking.
    function requestUnstake(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Account storage a = accounts[msg.sender];
        uint256 free = a.stake - a.locked;
        if (amount > free) revert InsufficientFreeStake(msg.sender, free, amount);
        a.stake -= uint64(amount);
        Thaw storage t = thaws[msg.sender];
        t.amount += uint64(amount);
        t.readyAt = (block.timestamp + thawPeriod).toUint64();
        emit UnstakeRequested(msg.sender, amount, t.readyAt);
    }

    function withdrawStake() external nonReentrant {
        Thaw memory t = thaws[msg.sender];
        if (t.amount == 0) revert NothingThawing();
        if (block.timestamp < t.readyAt) revert StillThawing(t.readyAt);
        delete thaws[msg.sender];
        token.safeTransfer(msg.sender, t.amount);
        emit StakeWithdrawn(msg.sender, t.amount);
    }

    function withdrawEarnings() external nonReentrant {
        Account storage a = accounts[msg.sender];
        uint256 amount = a.owed;
        if (amount == 0) revert NothingOwed();
        a.owed = 0;
        token.safeTransfer(msg.sender, amount);
        emit EarningsWithdrawn(msg.sender, amount);
    }

    // ---------------------------------------------------------------- consumer actions

    /// Prepay: jobs then draw from credit (one warm slot) instead of a transferFrom per job.
    function deposit(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        credit[msg.sender] += amount;
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit Deposited(msg.sender, amount);
    }

    /// Pull back credit: refunds and unspent deposits.
    function withdrawCredit() external nonReentrant {
        uint256 amount = credit[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        credit[msg.sender] = 0;
        token.safeTransfer(msg.sender, amount);
        emit CreditWithdrawn(msg.sender, amount);
    }

    // ---------------------------------------------------------------- views

    function lockFor(uint256 maxTokens, uint256 price) public view returns (uint256) {
        uint256 lock = uint256(collateralRatio) * maxTokens * price;
        return lock < minJobLock ? minJobLock : lock;
    }

    function freeStake(address provider) external view returns (uint256) {
        Account memory a = accounts[provider];
        return a.stake - a.locked;
    }

    // ---------------------------------------------------------------- market only

    /// Check that each provider offers `modelHash` at or under `priceCap` with enough free stake,
    /// lock that stake, take the escrow maxTokens * sum(prices) from the consumer (credit first),
    /// and return the prices the job is opened with.
    function openJobFunds(
        address consumer,
        bytes32 modelHash,
        uint256 priceCap,
        uint256 maxTokens,
        address[3] calldata providers
    ) external onlyMarket nonReentrant returns (uint64[3] memory prices) {
        for (uint256 i; i < 3; ++i) {
            prices[i] = _lock(providers[i], modelHash, priceCap, maxTokens);
        }
        _collect(consumer, maxTokens * (uint256(prices[0]) + prices[1] + prices[2]));
    }

    /// Replace one provider of an open job: unlock the old one, lock the new one, and move the
    /// escrow by the price difference.
    function swapProvider(
        address consumer,
        bytes32 modelHash,
        uint256 priceCap,
        uint256 maxTokens,
        address oldProvider,
        uint64 oldPrice,
        address newProvider
    ) external onlyMarket nonReentrant returns (uint64 newPrice) {
        accounts[oldProvider].locked -= uint64(lockFor(maxTokens, oldPrice));
        newPrice = _lock(newProvider, modelHash, priceCap, maxTokens);
        uint256 oldShare = maxTokens * oldPrice;
        uint256 newShare = maxTokens * newPrice;
        if (newShare > oldShare) {
            _collect(consumer, newShare - oldShare);
        } else if (oldShare > newShare) {
            credit[consumer] += oldShare - newShare;
        }
    }

    /// Close a job: unlock each provider's job lock, credit `pays[i]` to its earnings, burn the
    /// lock of each provider whose bit is set in `slashMask`, and credit the rest of the escrow
    /// to the consumer. The market guarantees sum(pays) <= escrow.
    function closeJob(
        bytes32 jobId,
        address consumer,
        uint256 maxTokens,
        address[3] calldata providers,
        uint64[3] calldata prices,
        uint256[3] calldata pays,
        uint256 slashMask
    ) external onlyMarket nonReentrant {
        uint256 escrow = maxTokens * (uint256(prices[0]) + prices[1] + prices[2]);
        uint256 paid;
        uint256 burnTotal;
        for (uint256 i; i < 3; ++i) {
            Account memory a = accounts[providers[i]];
            uint64 lock = uint64(lockFor(maxTokens, prices[i]));
            a.locked -= lock;
            if (pays[i] != 0) {
                a.owed = (uint256(a.owed) + pays[i]).toUint64();
                paid += pays[i];
            }
            if (slashMask & (1 << i) != 0) {
                a.stake -= lock; // locked <= stake always holds, so this never underflows
                burnTotal += lock;
                emit Slashed(providers[i], jobId, lock);
            }
            accounts[providers[i]] = a; // one slot write per provider
        }
        if (paid > escrow) revert PayAboveEscrow(paid, escrow);
        if (escrow > paid) credit[consumer] += escrow - paid;
        // Slashed stake is burned: never handed to the consumer or the majority, so neither
        // gains by provoking or fabricating a dissent.
        if (burnTotal != 0) ERC20Burnable(address(token)).burn(burnTotal);
    }

    /// Take `amount` from the consumer into escrow: its credit first, then transferFrom.
    function _collect(address consumer, uint256 amount) private {
        uint256 c = credit[consumer];
        if (c >= amount) {
            credit[consumer] = c - amount;
            return;
        }
        if (c != 0) credit[consumer] = 0;
        token.safeTransferFrom(consumer, address(this), amount - c);
    }

    function _lock(address provider, bytes32 modelHash, uint256 priceCap, uint256 maxTokens)
        private
        returns (uint64 price)
    {
        Account storage a = accounts[provider];
        price = a.price;
        bytes32 offered = listings[provider].modelHash;
        if (offered == bytes32(0)) revert NotRegistered(provider);
        if (offered != modelHash) revert WrongModel(provider);
        if (price > priceCap) revert PriceAboveCap(provider, price, priceCap);
        uint256 lock = lockFor(maxTokens, price);
        uint256 free = a.stake - a.locked;
        if (lock > free) revert InsufficientFreeStake(provider, free, lock);
        a.locked += uint64(lock);
    }
}
