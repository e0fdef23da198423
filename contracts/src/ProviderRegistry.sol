// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title ProviderRegistry — who serves which model in which pool, at what price, with how much at
///        stake; the stake-weighted draw of a job's seats and of a dispute's jury; and the one vault
///        of the market's tokens.
/// @notice Holds providers' stake, thawing stake and earnings, and consumers' escrow, bonds and
///         credit. The market holds no tokens: a job's money moves by bookkeeping here, and only the
///         bound market may draw, lock, pay, refund and slash. A provider's stake, locked stake,
///         earnings and price share one storage slot (the token's supply cap of 2^64-1 makes uint64
///         fields safe), so a job touches one slot per provider.
///
///         Pools: a provider offers one model in one pool, keccak256(abi.encode(modelHash, group));
///         group 0 is the open market, any other group a private mesh its providers chose to join.
///         Nobody hand-picks a job's providers: the market draws them from a pool with randomness
///         fixed after the job was requested, each provider weighted by min(free stake, weightCap).
///         Stake is locked only when a job is contested: an agreed job never locks anything.
///
///         Invariant: token.balanceOf(this) == sum(stake) + sum(thawing) + sum(owed) + sum(credit)
///                    + sum(held by open jobs: escrow and bonds), and locked <= stake for every provider.
contract ProviderRegistry is ReentrancyGuardTransient {
    using SafeERC20 for IERC20;
    using SafeCast for uint256;

    struct Account {
        uint64 stake; // active stake, including the locked part
        uint64 locked; // part of stake that backs seats of contested jobs: cannot thaw, can be slashed
        uint64 owed; // earnings waiting for withdrawEarnings()
        uint64 price; // price per output token, in token base units; 0 = never registered
    }

    struct Listing {
        bytes32 modelHash; // sha256 of the GGUF file; 0 = not offering any model
        bytes32 manifestHash; // keccak256 of the canonical signed manifest
        bytes32 group; // 0 = the open market
        uint256 poolIndex; // 1-based position in its pool; 0 = in no pool
    }

    struct Thaw {
        uint64 amount;
        uint64 readyAt;
    }

    /// What a draw needs of a pool member, in ONE slot: a draw reads nothing else. Kept in step
    /// with the account by every change of price, stake or locked stake (none on an agreed job).
    struct Member {
        address provider;
        uint40 price; // its price per output token (register refuses prices above 2^40 - 1)
        uint32 free; // stake - locked, capped at 2^32 - 1 (4,294 MESH: far above any weightCap)
        uint24 touched; // low 24 bits of the block of its last change (see _keep)
    }

    /// A pool: its members, and its size as the current block began (a draw's view, see draw).
    struct Pool {
        uint32 size;
        uint32 sizeBefore; // the size when block `changedAt` began
        uint64 changedAt; // the last block in which the size changed
        mapping(uint256 => Member) members;
    }

    /// Who a draw may pick. A seat draw (forSeat) skips providers above the price cap and those
    /// whose stake could not back the seat's lock (see draw); a jury draw takes any listed provider.
    /// When `amount` is nonzero the draw also takes it from `payer` (a job's escrow).
    struct DrawSpec {
        bytes32 pool;
        bytes32 seed;
        uint256 count;
        uint256 priceCap;
        uint256 maxTokens;
        bool forSeat;
        address payer;
        uint256 amount;
    }

    /// What closing a contested job moves, computed by the market. The registry checks that it
    /// takes out exactly what the job held: refund + bondRefund + sum(pays) + jury pay == held.
    struct Close {
        bytes32 jobId;
        address consumer;
        uint256 held; // escrow (and a dispute bond) this job holds in the vault
        address[5] seats;
        uint64[5] locks; // what each seat has locked for this job (taken when it was contested)
        uint256[5] pays;
        uint256 slashMask; // seats whose lock is burned
        uint256 refund; // to the consumer's credit
        address bondPayer;
        uint256 bondRefund; // to the bond payer's credit
        address[3] jurors;
        uint256 juryShare; // to each nonzero juror's earnings
    }

    uint256 public constant MAX_ENDPOINT_BYTES = 256;
    /// Candidates looked at per draw before giving up (each costs two storage reads).
    uint256 public constant MAX_DRAW_ATTEMPTS = 64;

    IERC20 public immutable token;
    /// Seconds between requestUnstake and withdrawStake.
    uint64 public immutable thawPeriod;
    /// A seat of a contested job locks max(minJobLock, collateralRatio * maxTokens * price) of its
    /// provider's stake: what the provider loses if a jury proves its result invalid.
    uint64 public immutable minJobLock;
    uint64 public immutable collateralRatio;
    /// Draw weight = min(stake, weightCap): stake above it adds no weight (identities may split it).
    uint64 public immutable weightCap;
    /// One job may lock at most stake / maxLockShare of a provider: a bound on what one job can risk.
    uint64 public immutable maxLockShare;

    /// The JobMarket, the only contract that may draw, pay, refund, lock and slash. Deployed right
    /// after the registry, so its address is known in advance (contracts/deploy.py computes it from
    /// the deployer's nonce) and an immutable spares a storage read on every job.
    address public immutable market;

    mapping(address => Account) public accounts;
    mapping(address => Listing) public listings;
    mapping(address => Thaw) public thaws;
    /// Consumers' prepaid or refunded tokens; jobs and bonds spend it before pulling with transferFrom.
    mapping(address => uint256) public credit;
    mapping(bytes32 => Pool) internal _pools;
    /// A member slot as the block of its last change began (0: empty), valid while the slot's
    /// `touched` is the current block. A draw reads the pool as it was when its block began: what
    /// anyone changes in the draw's block (knowing its prevrandao, public a slot ahead on
    /// proof-of-stake) cannot steer it.
    mapping(bytes32 => mapping(uint256 => Member)) internal _before;
    /// A private mesh's admin (its first provider) and whom it invited.
    mapping(bytes32 => address) public groupAdmin;
    mapping(bytes32 => mapping(address => bool)) public invited;

    /// `endpoint` is the provider's libp2p multiaddr ending in /p2p/<peer id>: where consumers
    /// fetch the manifest. It is only logged, never stored; the peer id proves the address.
    event ProviderRegistered(
        address indexed provider,
        bytes32 indexed modelHash,
        bytes32 indexed group,
        bytes32 manifestHash,
        uint64 price,
        string endpoint
    );
    event ProviderDeregistered(address indexed provider);
    event GroupClaimed(bytes32 indexed group, address indexed admin);
    /// Thawing stake taken back into stake to back the lock of a contested seat.
    event ThawReclaimed(address indexed provider, uint256 amount);
    event GroupInvite(bytes32 indexed group, address indexed provider, bool admitted);
    event Staked(address indexed provider, uint256 amount);
    event UnstakeRequested(address indexed provider, uint256 amount, uint64 readyAt);
    event StakeWithdrawn(address indexed provider, uint256 amount);
    event EarningsWithdrawn(address indexed provider, uint256 amount);
    event Slashed(address indexed provider, bytes32 indexed jobId, uint256 amount);
    event Deposited(address indexed consumer, uint256 amount);
    event CreditWithdrawn(address indexed consumer, uint256 amount);

    error OnlyMarket();
    error ZeroAmount();
    error ZeroHash();
    error ZeroPrice();
    error EndpointTooLong(uint256 length);
    error NotRegistered(address provider);
    error InsufficientFreeStake(address provider, uint256 free, uint256 needed);
    error NotEnoughProviders(uint256 found, uint256 needed);
    error NothingThawing();
    error StillThawing(uint64 readyAt);
    error NothingOwed();
    error NothingToWithdraw();
    error HeldMismatch(uint256 out, uint256 held);
    error NotGroupAdmin(bytes32 group);
    error NotInvited(bytes32 group, address provider);

    modifier onlyMarket() {
        if (msg.sender != market) revert OnlyMarket();
        _;
    }

    constructor(
        IERC20 token_,
        address market_,
        uint64 thawPeriod_,
        uint64 minJobLock_,
        uint64 collateralRatio_,
        uint64 weightCap_,
        uint64 maxLockShare_
    ) {
        require(weightCap_ > 0 && maxLockShare_ > 0, "weightCap and maxLockShare must be positive");
        token = token_;
        market = market_;
        thawPeriod = thawPeriod_;
        minJobLock = minJobLock_;
        collateralRatio = collateralRatio_;
        weightCap = weightCap_;
        maxLockShare = maxLockShare_;
    }

    // ---------------------------------------------------------------- provider actions

    /// Offer a model at a price in a pool (group 0: the open market), reachable at `endpoint`.
    /// Re-registering changes future draws only: open jobs keep the price they were drawn at.
    function register(bytes32 modelHash, bytes32 manifestHash, uint64 price, bytes32 group, string calldata endpoint)
        external
    {
        if (modelHash == bytes32(0) || manifestHash == bytes32(0)) revert ZeroHash();
        if (price == 0 || price > type(uint40).max) revert ZeroPrice();
        if (bytes(endpoint).length > MAX_ENDPOINT_BYTES) revert EndpointTooLong(bytes(endpoint).length);
        if (group != bytes32(0)) _admit(group);
        Listing storage l = listings[msg.sender];
        bytes32 pool = poolKey(modelHash, group);
        if (l.poolIndex != 0 && poolKey(l.modelHash, l.group) != pool) _leavePool(l);
        if (l.poolIndex == 0) {
            Pool storage pl = _pools[pool];
            uint256 idx = pl.size;
            _resize(pl, idx + 1);
            _keep(pool, idx);
            pl.members[idx] = Member(msg.sender, 0, 0, uint24(block.number));
            l.poolIndex = idx + 1;
        }
        (l.modelHash, l.manifestHash, l.group) = (modelHash, manifestHash, group);
        accounts[msg.sender].price = price;
        _sync(msg.sender);
        emit ProviderRegistered(msg.sender, modelHash, group, manifestHash, price, endpoint);
    }

    /// A private mesh admits whom its admin invited: the first provider to register in a group
    /// becomes its admin. Consent runs both ways: a provider joins only the meshes it registers
    /// in, and a mesh holds only the providers it invited (else anyone's sybils could join a small
    /// mesh and sit on its juries).
    function invite(bytes32 group, address provider, bool admitted) external {
        if (groupAdmin[group] != msg.sender) revert NotGroupAdmin(group);
        invited[group][provider] = admitted;
        emit GroupInvite(group, provider, admitted);
    }

    function _admit(bytes32 group) private {
        address admin = groupAdmin[group];
        if (admin == address(0)) {
            groupAdmin[group] = msg.sender;
            emit GroupClaimed(group, msg.sender);
        } else if (admin != msg.sender && !invited[group][msg.sender]) {
            revert NotInvited(group, msg.sender);
        }
    }

    /// Stop being drawn for new jobs; seats already drawn are unaffected.
    function deregister() external {
        Listing storage l = listings[msg.sender];
        if (l.modelHash == bytes32(0)) revert NotRegistered(msg.sender);
        _leavePool(l);
        delete listings[msg.sender];
        emit ProviderDeregistered(msg.sender);
    }

    function stake(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Account storage a = accounts[msg.sender];
        a.stake = (uint256(a.stake) + amount).toUint64();
        _sync(msg.sender);
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit Staked(msg.sender, amount);
    }

    /// Move free stake into the thawing queue. Stake locked by a contested job never thaws, so
    /// unstaking cannot dodge the slash a jury may decide.
    function requestUnstake(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Account storage a = accounts[msg.sender];
        uint256 free = a.stake - a.locked;
        if (amount > free) revert InsufficientFreeStake(msg.sender, free, amount);
        a.stake -= uint64(amount);
        _sync(msg.sender);
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

    /// Prepay: jobs and bonds then draw from credit (one warm slot) instead of a transferFrom each.
    function deposit(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        credit[msg.sender] += amount;
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit Deposited(msg.sender, amount);
    }

    /// Pull back credit: refunds, returned bonds and unspent deposits.
    function withdrawCredit() external nonReentrant {
        uint256 amount = credit[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        credit[msg.sender] = 0;
        token.safeTransfer(msg.sender, amount);
        emit CreditWithdrawn(msg.sender, amount);
    }

    // ---------------------------------------------------------------- views

    function poolKey(bytes32 modelHash, bytes32 group) public pure returns (bytes32) {
        return keccak256(abi.encode(modelHash, group));
    }

    function poolSize(bytes32 pool) external view returns (uint256) {
        return _pools[pool].size;
    }

    function poolMember(bytes32 pool, uint256 index) external view returns (Member memory) {
        if (index >= _pools[pool].size) revert NotRegistered(address(0));
        return _pools[pool].members[index];
    }

    function lockFor(uint256 maxTokens, uint256 price) public view returns (uint256) {
        uint256 lock = uint256(collateralRatio) * maxTokens * price;
        return lock < minJobLock ? minJobLock : lock;
    }

    function freeStake(address provider) external view returns (uint256) {
        Account memory a = accounts[provider];
        return a.stake - a.locked;
    }

    // ---------------------------------------------------------------- market only

    /// Take `amount` from `payer` into the vault: its credit first, then transferFrom.
    function collect(address payer, uint256 amount) external onlyMarket nonReentrant {
        _collect(payer, amount);
    }

    function _collect(address payer, uint256 amount) private {
        uint256 c = credit[payer];
        if (c >= amount) {
            credit[payer] = c - amount;
            return;
        }
        if (c != 0) credit[payer] = 0;
        token.safeTransferFrom(payer, address(this), amount - c);
    }

    /// Draw `spec.count` distinct providers from a pool, each candidate weighted by
    /// min(free stake, weightCap) (rejection sampling over uniform picks: a member at index
    /// r % size is accepted with probability weight / weightCap, from independent bits of r).
    /// Skipped: anyone in `exclude`; for a seat, providers above the price cap and providers whose
    /// seat lock would exceed free stake / maxLockShare.
    /// Nothing is locked here: a seat's stake is locked only if its job is contested (lockSeats).
    /// Returns whom it found (at most three; the first `found` entries), with their prices, after
    /// looking at no more than MAX_DRAW_ATTEMPTS candidates.
    function draw(DrawSpec calldata spec, address[] calldata exclude)
        external
        onlyMarket
        nonReentrant
        returns (address[3] memory picked, uint64[3] memory prices, uint256 found)
    {
        if (spec.amount != 0) _collect(spec.payer, spec.amount);
        Pool storage pool = _pools[spec.pool];
        // The pool as this block began: its size then, and each member slot then.
        uint256 size = pool.changedAt == block.number ? pool.sizeBefore : pool.size;
        uint256 count = spec.count < 3 ? spec.count : 3;
        uint256 cap = weightCap;
        for (uint256 attempt; attempt < MAX_DRAW_ATTEMPTS && found < count && size != 0; ++attempt) {
            uint256 r = uint256(keccak256(abi.encode(spec.seed, attempt)));
            uint256 idx = r % size;
            Member memory m = pool.members[idx];
            if (m.touched == uint24(block.number)) m = _before[spec.pool][idx];
            if ((r >> 128) % cap >= (m.free < cap ? m.free : cap)) continue; // an empty slot weighs 0
            if (!_eligible(m, spec, exclude, picked, found)) continue;
            (picked[found], prices[found]) = (m.provider, m.price);
            ++found;
        }
    }

    /// A job was contested: lock, for each seat in `mask`, up to its full lock from its free stake
    /// (a provider in many contested jobs at once may come up short). Returns what was locked.
    function lockSeats(address[5] calldata seats, uint64[5] calldata prices, uint256 maxTokens, uint256 mask)
        external
        onlyMarket
        returns (uint64[5] memory locks)
    {
        for (uint256 i; i < 5; ++i) {
            if (mask & (1 << i) == 0) continue;
            Account storage a = accounts[seats[i]];
            uint256 want = lockFor(maxTokens, prices[i]);
            uint256 free = a.stake - a.locked;
            if (free < want) {
                // Stake the seat put to thaw after it was drawn is still here (a job ends long
                // before a thaw does): it comes back to back the lock, so unstaking dodges nothing.
                Thaw storage t = thaws[seats[i]];
                uint64 back = uint64(want - free < t.amount ? want - free : t.amount);
                if (back != 0) {
                    t.amount -= back;
                    a.stake += back;
                    free += back;
                    emit ThawReclaimed(seats[i], back);
                }
            }
            locks[i] = uint64(want < free ? want : free);
            a.locked += locks[i];
            _sync(seats[i]);
        }
    }

    /// Close an agreed job (the fast path: no locks, no slash): credit each seat's pay to its
    /// earnings and the rest of the escrow to the consumer.
    function payOut(address consumer, uint256 held, address[5] calldata seats, uint256[5] calldata pays)
        external
        onlyMarket
        nonReentrant
    {
        uint256 out;
        for (uint256 i; i < 5; ++i) {
            if (pays[i] == 0) continue;
            Account storage a = accounts[seats[i]];
            a.owed = (uint256(a.owed) + pays[i]).toUint64();
            out += pays[i];
        }
        if (out > held) revert HeldMismatch(out, held);
        if (held > out) credit[consumer] += held - out;
    }

    /// Close a job on the slow path: release each seat's lock, credit pays to earnings, burn the
    /// locks of slashed seats, pay the jury, and return the rest to the consumer and the bond
    /// payer. Slashed stake goes to nobody, so nobody gains by provoking or fabricating a slash.
    function close(Close calldata c) external onlyMarket nonReentrant {
        uint256 out = c.refund + c.bondRefund;
        uint256 burnTotal;
        for (uint256 i; i < 5; ++i) {
            address p = c.seats[i];
            if (p == address(0)) continue;
            Account memory a = accounts[p];
            a.locked -= c.locks[i];
            if (c.pays[i] != 0) {
                a.owed = (uint256(a.owed) + c.pays[i]).toUint64();
                out += c.pays[i];
            }
            if (c.slashMask & (1 << i) != 0 && c.locks[i] != 0) {
                // The lock was reserved from free stake when the job was contested, so it is there
                // whatever the provider did since: locked <= stake always holds.
                a.stake -= c.locks[i];
                burnTotal += c.locks[i];
                emit Slashed(p, c.jobId, c.locks[i]);
            }
            accounts[p] = a; // one slot write per seat
            _sync(p);
        }
        if (c.juryShare != 0) {
            for (uint256 j; j < 3; ++j) {
                if (c.jurors[j] == address(0)) continue;
                Account storage ja = accounts[c.jurors[j]];
                ja.owed = (uint256(ja.owed) + c.juryShare).toUint64();
                out += c.juryShare;
            }
        }
        if (out != c.held) revert HeldMismatch(out, c.held);
        if (c.refund != 0) credit[c.consumer] += c.refund;
        if (c.bondRefund != 0) credit[c.bondPayer] += c.bondRefund;
        if (burnTotal != 0) ERC20Burnable(address(token)).burn(burnTotal);
    }

    // ---------------------------------------------------------------- internals

    function _leavePool(Listing storage l) private {
        bytes32 key = poolKey(l.modelHash, l.group);
        Pool storage pool = _pools[key];
        uint256 idx = l.poolIndex - 1;
        uint256 lastIdx = pool.size - 1;
        _keep(key, idx);
        _keep(key, lastIdx);
        Member memory last = pool.members[lastIdx];
        last.touched = uint24(block.number);
        pool.members[idx] = last;
        listings[last.provider].poolIndex = idx + 1;
        pool.members[lastIdx] = Member(address(0), 0, 0, uint24(block.number));
        _resize(pool, lastIdx);
        l.poolIndex = 0;
    }

    /// Before the first change of slot `i` of `pool` in this block, keep the slot as the block began.
    function _keep(bytes32 pool, uint256 i) private {
        Member memory m = _pools[pool].members[i];
        if (m.touched != uint24(block.number)) _before[pool][i] = m;
    }

    function _resize(Pool storage pool, uint256 size) private {
        if (pool.changedAt != block.number) (pool.sizeBefore, pool.changedAt) = (pool.size, uint64(block.number));
        pool.size = uint32(size);
    }

    /// Not excluded, not picked yet, and for a seat: within the price cap, and the seat's lock is
    /// at most free stake / maxLockShare (so it could be backed, and one job risks a bounded part).
    function _eligible(
        Member memory m,
        DrawSpec calldata spec,
        address[] calldata exclude,
        address[3] memory picked,
        uint256 found
    ) private view returns (bool) {
        for (uint256 i; i < exclude.length; ++i) {
            if (exclude[i] == m.provider) return false;
        }
        for (uint256 i; i < found; ++i) {
            if (picked[i] == m.provider) return false;
        }
        if (!spec.forSeat) return true;
        if (m.price > spec.priceCap) return false;
        return lockFor(spec.maxTokens, m.price) * maxLockShare <= m.free;
    }

    /// Copy the account's price and free stake into its pool entry (a draw reads only that).
    function _sync(address p) private {
        Listing storage l = listings[p];
        if (l.poolIndex == 0) return;
        Account memory a = accounts[p];
        uint256 free = a.stake - a.locked;
        bytes32 key = poolKey(l.modelHash, l.group);
        _keep(key, l.poolIndex - 1);
        _pools[key].members[l.poolIndex - 1] = Member(
            p, uint40(a.price), uint32(free < type(uint32).max ? free : type(uint32).max), uint24(block.number)
        );
    }
}
