// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {ProviderRegistry} from "./ProviderRegistry.sol";

/// @title JobMarket — a paid query's life on-chain: escrow, a committee nobody chooses, settlement
///        that pays agreeing work at once, and a court for everything else.
/// @notice A job is stored as ONE storage slot: the keccak256 of its parameters, in one of its
///         consumer's RING slots, which the consumer picks among its free ones and which is reused
///         once the job in it closed (an agreed job writes no new storage). Every call passes the
///         parameters back (the Job is always the first argument) and the market checks them
///         against that hash; the events carry them for everyone else. The job id is
///         keccak256(abi.encode(consumer, openBlock, slot)): a slot is opened at most once a block,
///         so an id is never reused and old signatures never replay. The market holds no tokens:
///         escrow, bonds, earnings and stake are kept by the ProviderRegistry (the vault), which
///         only this market may move.
///
///         Life of a job (deadlines count from drawnAt, the draw's block time):
///           openJob      consumer: escrow (maxTokens * priceCap * 4: three seats and a jury reserve)
///           drawSeats    any EOA, within DRAW_WINDOW blocks after the open: three seats drawn from the
///                        pool by stake, with a seed nobody knows before the draw's block (the open
///                        block's hash and the draw block's prevrandao); nothing is locked: a
///                        provider's stake is locked only if its job is contested
///           addSeat      consumer, before deliveryEnd: one more seat, drawn (never chosen), up to 5
///           settle       consumer, before revealEnd, with every seat's signed result; a seat may be
///                        left out only from claimEnd on, and only if it did not commit
///           commitResult a seat, [deliveryEnd, claimEnd): a provider-bound hidden claim
///           revealResult anyone, [claimEnd, revealEnd)
///           finalize     anyone: from claimEnd when nobody committed, else from revealEnd; the
///                        revealed results settle the job; a commitment never revealed is slashed
///         Results that all agree close the job at once: each seat is paid tokenCount * price. Any
///         disagreement makes the job CONTESTED: every seat with a result has its lock taken from its
///         stake, and a provisional outcome (the strict majority of two or more is paid, nobody is
///         slashed for it) stands unless a party disputes within disputeWindow.
///         A dispute draws a jury from the same pool; every judged seat publishes its output tokens;
///         jurors score them under the model (docs/VERIFICATION.md) and vote in commit-reveal; a seat
///         is slashed only on a majority of the jury for "hard fail" (or for not publishing what it
///         signed). A majority of the committee never convicts anyone.
contract JobMarket is EIP712, ReentrancyGuardTransient {
    struct Job {
        address consumer;
        uint8 slot; // which of the consumer's RING slots holds the job
        bytes32 modelHash;
        bytes32 group; // 0 = the open market; else a private mesh its providers joined
        bytes32 promptHash;
        uint64 maxTokens;
        uint64 priceCap;
        uint64 openBlock;
        uint64 drawnAt; // 0 until the seats are drawn
        bytes32 seed; // keccak256(jobId, blockhash(openBlock), prevrandao of the draw); 0 until drawn
        address[5] seats; // three drawn, up to two added; address(0) = no seat
        uint64[5] prices;
    }

    /// A seat's EIP-712 signed result, signature in EIP-2098 compact form (r, vs); r == vs == 0
    /// means "no result from this seat". Static, so calldata carries no offsets or lengths.
    struct SignedResult {
        bytes32 outputHash;
        uint64 tokenCount;
        bytes32 r;
        bytes32 vs;
    }

    struct Reveal {
        bytes32 outputHash;
        uint64 tokenCount;
        bool revealed;
    }

    /// The results of a contested job, passed back in calldata and checked against contests[jobId].
    struct Contest {
        bytes32[5] outputs;
        uint64[5] counts;
        uint8 present; // seats with a valid result (signed, tokenCount <= maxTokens)
        uint8 slashed; // seats slashed whatever happens: a provable lie, or a commitment never revealed
        uint8 provisional; // the strict majority of two or more, paid if nobody disputes
        uint64 contestedAt;
        uint64[5] locks; // stake each seat has locked for this job (its lock, or what was free)
    }

    struct Dispute {
        address disputer;
        uint64 openedBlock;
        uint64 juryAt; // time the jury was drawn; 0 before
        bool void; // no jury could be drawn: the provisional outcome stands, the bond returns
        uint8 evidence; // seats whose tokens were published
        uint8 revealed; // jurors who revealed a vote
        address[3] jurors;
        bytes32[3] commits;
        uint16[3] verdicts; // 2 bits per seat: 0 pass, 1 soft fail (unpaid), 2 hard fail (slashed)
    }

    enum Outcome {
        Agreed, // every present result agreed: all paid
        Provisional, // contested, nobody disputed (or no jury): the majority paid, nobody slashed for it
        Judged, // contested and judged by a jury
        Refunded // no valid result at all
    }

    bytes32 public constant RESULT_TYPEHASH = keccak256("Result(bytes32 jobId,bytes32 outputHash,uint64 tokenCount)");
    bytes32 private constant CLOSED = bytes32(uint256(1));
    /// Jobs a consumer may have open at once (its RING slots).
    uint256 public constant RING = 16;
    uint64 public constant MAX_TOKENS_LIMIT = 1 << 20;
    uint256 public constant SEATS = 5;
    uint256 public constant FIRST_SEATS = 3;
    /// Blocks after the open (or the dispute) within which the seats (or the jury) can be drawn.
    uint256 public constant DRAW_WINDOW = 8;
    uint16 private constant PASS = 0;
    uint16 private constant SOFT = 1;
    uint16 private constant HARD = 2;

    ProviderRegistry public immutable registry;
    uint64 public immutable deliveryWindow;
    uint64 public immutable claimWindow;
    uint64 public immutable revealWindow;
    uint64 public immutable disputeWindow;
    /// Each court phase (evidence, vote commit, vote reveal) lasts this long.
    uint64 public immutable courtPhase;
    uint8 public immutable jurySize;
    /// A dispute needs a jury fee (maxTokens * priceCap) of at least this: jurors are paid for work.
    uint64 public immutable minJuryFee;

    /// Per consumer, RING slots: keccak256(abi.encode(job)) while open, keccak256(abi.encode(that,
    /// contest)) while contested, CLOSED after, 0 never used.
    mapping(address => bytes32[16]) internal _slots;
    mapping(bytes32 => bytes32[5]) internal _commits;
    mapping(bytes32 => Reveal[5]) internal _reveals;
    mapping(bytes32 => Dispute) internal _disputes;

    /// The job's openBlock is the block this event is in.
    event JobOpened(
        bytes32 indexed jobId,
        address indexed consumer,
        bytes32 indexed modelHash,
        uint8 slot,
        bytes32 group,
        bytes32 promptHash,
        uint64 maxTokens,
        uint64 priceCap
    );
    event SeatsDrawn(bytes32 indexed jobId, bytes32 seed, uint64 drawnAt, address[3] seats, uint64[3] prices);
    event SeatAdded(bytes32 indexed jobId, uint8 seat, address indexed provider, uint64 price);
    event ResultCommitted(bytes32 indexed jobId, uint8 seat, address indexed provider, bytes32 commitment);
    event ResultRevealed(bytes32 indexed jobId, uint8 seat, address indexed provider, bytes32 outputHash, uint64 tokenCount);
    event JobContested(bytes32 indexed jobId, Contest contest);
    event DisputeOpened(bytes32 indexed jobId, address indexed disputer, uint256 bond, bytes request);
    event JuryDrawn(bytes32 indexed jobId, address[3] jurors);
    event EvidencePosted(bytes32 indexed jobId, uint8 seat, bytes32 textHash, bytes tokens);
    event VoteCommitted(bytes32 indexed jobId, address indexed juror);
    event VoteRevealed(bytes32 indexed jobId, address indexed juror, uint16 verdicts);
    /// paid[i] = tokenCount * price of seat i (its token count is paid / price); `present` marks
    /// the seats with a valid result, `slashMask` those whose lock was burned; `refund` went to the
    /// consumer's credit. A jury's pay is in JuryPaid.
    event JobSettled(bytes32 indexed jobId, Outcome outcome, uint8 present, uint256[5] paid, uint8 slashMask, uint256 refund);
    event JuryPaid(bytes32 indexed jobId, address[3] jurors, uint256 share, uint256 bondRefund);

    error BadMaxTokens(uint256 maxTokens);
    error ZeroPriceCap();
    error SlotBusy(uint8 slot);
    error JobNotOpen(bytes32 jobId);
    error NotDrawn(bytes32 jobId);
    error AlreadyDrawn(bytes32 jobId);
    error DrawExpired(uint64 openBlock);
    error NotConsumer();
    error NotSeat(uint8 seat);
    error BadSeat(uint8 seat);
    error SeatsFull();
    error TooEarly(uint64 opensAt);
    error TooLate(uint64 closedAt);
    error BadSignature(uint8 seat);
    error MissingResult(uint8 seat);
    error AlreadyCommitted(uint8 seat);
    error NoCommitment(uint8 seat);
    error ZeroCommitment();
    error CommitmentMismatch(uint8 seat);
    error AlreadyRevealed(uint8 seat);

    error AlreadyDisputed(bytes32 jobId);
    error NoDispute(bytes32 jobId);
    error NotAParty();
    error RequestMismatch();
    error NoJury(bytes32 jobId);
    error NotJuror();
    error EvidenceMismatch(uint8 seat);
    error DrawByContract();
    error DisputeTooSmall(uint256 fee, uint256 min);

    constructor(
        ProviderRegistry registry_,
        uint64 deliveryWindow_,
        uint64 claimWindow_,
        uint64 revealWindow_,
        uint64 disputeWindow_,
        uint64 courtPhase_,
        uint8 jurySize_,
        uint64 minJuryFee_
    ) EIP712("Meshmarket", "2") {
        require(jurySize_ >= 1 && jurySize_ <= 3, "jury size 1 to 3");
        registry = registry_;
        deliveryWindow = deliveryWindow_;
        claimWindow = claimWindow_;
        revealWindow = revealWindow_;
        disputeWindow = disputeWindow_;
        courtPhase = courtPhase_;
        jurySize = jurySize_;
        minJuryFee = minJuryFee_;
    }

    // ---------------------------------------------------------------- consumer: open, draw, add

    /// Request a job for `modelHash` in pool `group` (0: the open market) at most `priceCap` per
    /// output token, in the consumer's free slot `slot` (< RING; see slotsOf). The draw escrows
    /// maxTokens * priceCap * 4 (three seats and a jury reserve; the unspent part returns as credit).
    function openJob(uint8 slot, bytes32 modelHash, bytes32 group, bytes32 promptHash, uint64 maxTokens, uint64 priceCap)
        external
        returns (bytes32 jobId)
    {
        if (maxTokens == 0 || maxTokens > MAX_TOKENS_LIMIT) revert BadMaxTokens(maxTokens);
        if (priceCap == 0) revert ZeroPriceCap();
        if (slot >= RING) revert SlotBusy(slot);
        bytes32 prior = _slots[msg.sender][slot];
        if (prior != bytes32(0) && prior != CLOSED) revert SlotBusy(slot);
        Job memory job;
        (job.consumer, job.slot, job.modelHash, job.group) = (msg.sender, slot, modelHash, group);
        (job.promptHash, job.maxTokens, job.priceCap, job.openBlock) = (promptHash, maxTokens, priceCap, uint64(block.number));
        _slots[msg.sender][slot] = keccak256(abi.encode(job));
        jobId = keccak256(abi.encode(msg.sender, job.openBlock, slot));
        emit JobOpened(jobId, msg.sender, modelHash, slot, group, promptHash, maxTokens, priceCap);
    }

    /// Draw the first three seats (any externally owned account, from the block after openJob,
    /// within DRAW_WINDOW blocks): seed = keccak256(jobId, blockhash(openBlock), prevrandao), known
    /// to nobody before the draw's own block, so the pool cannot be arranged for it (a draw that
    /// finds too few eligible providers reverts and may be retried in a later block of the window).
    /// The consumer's escrow is taken here (credit first); nothing is locked.
    function drawSeats(Job calldata job) external nonReentrant {
        bytes32 jobId = _checkOpen(job);
        if (job.drawnAt != 0) revert AlreadyDrawn(jobId);
        bytes32 seed = _seed(jobId, job.openBlock);
        address[] memory exclude = new address[](1);
        exclude[0] = job.consumer;
        (address[3] memory seats, uint64[3] memory prices, uint256 found) = registry.draw(
            ProviderRegistry.DrawSpec(_pool(job), seed, FIRST_SEATS, job.priceCap, job.maxTokens, true, job.consumer,
                uint256(job.maxTokens) * job.priceCap * (FIRST_SEATS + 1)),
            exclude
        );
        if (found < FIRST_SEATS) revert ProviderRegistry.NotEnoughProviders(found, FIRST_SEATS);
        uint256 drawnAt = block.timestamp;
        bytes32 h;
        assembly ("memory-safe") {
            // The job's ABI encoding is the calldata after the selector (a static struct): copy it,
            // set drawnAt, seed and the first three seats and prices, hash it.
            let p := mload(0x40)
            calldatacopy(p, 4, 640)
            mstore(add(p, 256), drawnAt)
            mstore(add(p, 288), seed)
            for { let i := 0 } lt(i, 3) { i := add(i, 1) } {
                // Fixed-size memory arrays: no length word, element i at offset 32 * i.
                mstore(add(p, add(320, mul(i, 32))), mload(add(seats, mul(i, 32))))
                mstore(add(p, add(480, mul(i, 32))), mload(add(prices, mul(i, 32))))
            }
            h := keccak256(p, 640)
        }
        _slots[job.consumer][job.slot] = h;
        emit SeatsDrawn(jobId, seed, uint64(drawnAt), seats, prices);
    }

    /// One more seat (a seat failed, or the consumer wants more assurance), drawn like the first
    /// three with keccak256(seed, seat, prevrandao) (unknown before its block, like the first
    /// draw's); the consumer escrows its share. No seat is ever removed.
    function addSeat(Job calldata job) external nonReentrant {
        bytes32 jobId = _checkOpen(job);
        if (msg.sender != job.consumer) revert NotConsumer();
        if (job.drawnAt == 0) revert NotDrawn(jobId);
        uint64 deliveryEnd = job.drawnAt + deliveryWindow;
        if (block.timestamp >= deliveryEnd) revert TooLate(deliveryEnd);
        uint256 n = _seatCount(job);
        if (n == SEATS) revert SeatsFull();
        address[] memory exclude = new address[](n + 1);
        for (uint256 i; i < n; ++i) {
            exclude[i] = job.seats[i];
        }
        exclude[n] = job.consumer;
        (address[3] memory seat, uint64[3] memory price, uint256 found) = registry.draw(
            ProviderRegistry.DrawSpec(_pool(job), _addSeed(job.seed, n), 1, job.priceCap, job.maxTokens, true,
                job.consumer, uint256(job.maxTokens) * job.priceCap),
            exclude
        );
        if (found == 0) revert ProviderRegistry.NotEnoughProviders(0, 1);
        Job memory next = job;
        (next.seats[n], next.prices[n]) = (seat[0], price[0]);
        _store(job, keccak256(abi.encode(next)));
        emit SeatAdded(jobId, uint8(n), seat[0], price[0]);
    }

    /// An undrawn job past its draw window can never be drawn: anyone closes it (it holds no
    /// escrow yet), freeing its consumer's slot.
    function expire(Job calldata job) external {
        bytes32 jobId = _checkOpen(job);
        if (job.drawnAt != 0) revert AlreadyDrawn(jobId);
        if (block.number <= uint256(job.openBlock) + DRAW_WINDOW) revert TooEarly(job.openBlock + uint64(DRAW_WINDOW) + 1);
        _store(job, CLOSED);
        uint256[5] memory none;
        emit JobSettled(jobId, Outcome.Refunded, 0, none, 0, 0);
    }

    // ---------------------------------------------------------------- settlement

    /// The consumer settles with the seats' EIP-712 signed results, results[i] for seat i (a seat
    /// past the array's end counts as missing). A seat may be missing only from claimEnd on (every
    /// seat has had its claim window) and only if it did not commit.
    function settle(Job calldata job, SignedResult[] calldata results) external {
        bytes32 jobId = _checkOpen(job);
        if (msg.sender != job.consumer) revert NotConsumer();
        if (job.drawnAt == 0) revert NotDrawn(jobId);
        uint64 claimEnd = job.drawnAt + deliveryWindow + claimWindow;
        if (block.timestamp >= claimEnd + revealWindow) revert TooLate(claimEnd + revealWindow);
        Contest memory c;
        for (uint8 i; i < SEATS; ++i) {
            if (job.seats[i] == address(0)) continue;
            if (i >= results.length || (results[i].r == bytes32(0) && results[i].vs == bytes32(0))) {
                if (block.timestamp < claimEnd) revert MissingResult(i);
                if (_commits[jobId][i] != bytes32(0)) revert AlreadyCommitted(i);
                continue;
            }
            SignedResult calldata r = results[i];
            bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(RESULT_TYPEHASH, jobId, r.outputHash, r.tokenCount)));
            (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, r.r, r.vs);
            if (err != ECDSA.RecoverError.NoError || signer != job.seats[i]) revert BadSignature(i);
            _record(c, i, r.outputHash, r.tokenCount, job.maxTokens);
        }
        _conclude(jobId, job, c);
    }

    /// Seat `seat` binds itself to its result without revealing it, once the delivery window is
    /// over and the job is still open: commitment = keccak256(abi.encode(jobId, seat, provider,
    /// outputHash, tokenCount, salt)). Provider and seat inside: a copied commitment never reveals.
    function commitResult(Job calldata job, uint8 seat, bytes32 commitment) external {
        bytes32 jobId = _checkOpen(job);
        if (seat >= SEATS || job.seats[seat] == address(0)) revert BadSeat(seat);
        if (msg.sender != job.seats[seat]) revert NotSeat(seat);
        uint64 deliveryEnd = job.drawnAt + deliveryWindow;
        if (block.timestamp < deliveryEnd) revert TooEarly(deliveryEnd);
        uint64 claimEnd = deliveryEnd + claimWindow;
        if (block.timestamp >= claimEnd) revert TooLate(claimEnd);
        if (_commits[jobId][seat] != bytes32(0)) revert AlreadyCommitted(seat);
        if (commitment == bytes32(0)) revert ZeroCommitment(); // zero means "none" in storage
        _commits[jobId][seat] = commitment;
        emit ResultCommitted(jobId, seat, msg.sender, commitment);
    }

    /// Reveal after every commitment is final, so nobody can commit to what another revealed.
    function revealResult(Job calldata job, uint8 seat, bytes32 outputHash, uint64 tokenCount, bytes32 salt) external {
        bytes32 jobId = _checkOpen(job);
        if (seat >= SEATS || job.seats[seat] == address(0)) revert BadSeat(seat);
        uint64 claimEnd = job.drawnAt + deliveryWindow + claimWindow;
        if (block.timestamp < claimEnd) revert TooEarly(claimEnd);
        if (block.timestamp >= claimEnd + revealWindow) revert TooLate(claimEnd + revealWindow);
        bytes32 commitment = _commits[jobId][seat];
        if (commitment == bytes32(0)) revert NoCommitment(seat);
        if (_reveals[jobId][seat].revealed) revert AlreadyRevealed(seat);
        bytes32 expected = keccak256(abi.encode(jobId, seat, job.seats[seat], outputHash, tokenCount, salt));
        if (expected != commitment) revert CommitmentMismatch(seat);
        _reveals[jobId][seat] = Reveal(outputHash, tokenCount, true);
        emit ResultRevealed(jobId, seat, job.seats[seat], outputHash, tokenCount);
    }

    /// Anyone settles a job the consumer did not: from claimEnd when no seat committed (nothing to
    /// wait for), else from revealEnd on the revealed results. A seat that committed and never
    /// revealed is slashed: its commitment stopped the consumer from leaving it out, so withholding
    /// the reveal would be a free veto.
    function finalize(Job calldata job) external nonReentrant {
        bytes32 jobId = _checkOpen(job);
        if (job.drawnAt == 0) revert NotDrawn(jobId);
        uint64 claimEnd = job.drawnAt + deliveryWindow + claimWindow;
        bytes32[5] memory commits = _commits[jobId];
        bool anyCommit;
        for (uint256 i; i < SEATS; ++i) {
            if (commits[i] != bytes32(0)) anyCommit = true;
        }
        uint64 opensAt = anyCommit ? claimEnd + revealWindow : claimEnd;
        if (block.timestamp < opensAt) revert TooEarly(opensAt);
        Contest memory c;
        for (uint8 i; i < SEATS; ++i) {
            Reveal memory r = _reveals[jobId][i];
            if (r.revealed) {
                _record(c, i, r.outputHash, r.tokenCount, job.maxTokens);
            } else if (commits[i] != bytes32(0)) {
                c.slashed |= uint8(1 << i);
            }
        }
        if (anyCommit) {
            delete _commits[jobId];
            delete _reveals[jobId];
        }
        _conclude(jobId, job, c);
    }

    // ---------------------------------------------------------------- the court

    /// A party (the consumer, or a seat with a valid result) disputes a contested job: it posts a
    /// bond of maxTokens * priceCap and the request itself (keccak256 must be the promptHash), so
    /// jurors can score the outputs. The jury is drawn from the next block.
    function dispute(Job calldata job, Contest calldata c, bytes calldata request) external nonReentrant {
        bytes32 jobId = _checkContest(job, c);
        uint64 disputeEnd = c.contestedAt + disputeWindow;
        if (block.timestamp >= disputeEnd) revert TooLate(disputeEnd);
        Dispute storage d = _disputes[jobId];
        if (d.disputer != address(0)) revert AlreadyDisputed(jobId);
        if (msg.sender != job.consumer && _presentSeatOf(job, c, msg.sender) == SEATS) revert NotAParty();
        if (keccak256(request) != job.promptHash) revert RequestMismatch();
        uint256 bond = _juryFee(job);
        if (bond < minJuryFee) revert DisputeTooSmall(bond, minJuryFee);
        registry.collect(msg.sender, bond);
        (d.disputer, d.openedBlock) = (msg.sender, uint64(block.number));
        emit DisputeOpened(jobId, msg.sender, bond, request);
    }

    /// Draw the jury (any externally owned account, from the block after the dispute, within
    /// DRAW_WINDOW blocks), weighted by stake like the seats, excluding the seats, the consumer and
    /// the disputer, with a seed unknown before the draw's block (as for seats). A jury is always
    /// full (jurySize): from the job's pool, else from the model's open market; if neither can
    /// seat it, the dispute is void (one captured juror must never decide).
    function drawJury(Job calldata job, Contest calldata c) external {
        bytes32 jobId = _checkContest(job, c);
        Dispute storage d = _disputes[jobId];
        if (d.disputer == address(0)) revert NoDispute(jobId);
        if (d.juryAt != 0 || d.void) revert NoJury(jobId);
        bytes32 seed = keccak256(abi.encode(_seed(jobId, d.openedBlock), "jury"));
        address[] memory exclude = new address[](SEATS + 2);
        for (uint256 i; i < SEATS; ++i) {
            exclude[i] = job.seats[i];
        }
        (exclude[SEATS], exclude[SEATS + 1]) = (job.consumer, d.disputer);
        ProviderRegistry.DrawSpec memory spec =
            ProviderRegistry.DrawSpec(_pool(job), seed, jurySize, 0, 0, false, address(0), 0);
        (address[3] memory jurors,, uint256 found) = registry.draw(spec, exclude);
        if (found < jurySize && job.group != bytes32(0)) {
            spec.pool = registry.poolKey(job.modelHash, bytes32(0));
            (jurors,, found) = registry.draw(spec, exclude);
        }
        if (found < jurySize) {
            d.void = true;
            delete jurors;
        } else {
            (d.juryAt, d.jurors) = (uint64(block.timestamp), jurors);
        }
        emit JuryDrawn(jobId, jurors);
    }

    /// Publish what seat `seat` signed, during the evidence phase: the keccak256 of its text and
    /// its output tokens (uint32 big-endian each), which must hash to its output hash
    /// (keccak256(textHash || keccak256(tokens))) and number exactly its token count. Anyone may
    /// post it; a judged seat whose evidence is missing at the end of the phase is slashed.
    function postEvidence(Job calldata job, Contest calldata c, uint8 seat, bytes32 textHash, bytes calldata tokens)
        external
    {
        bytes32 jobId = _checkContest(job, c);
        Dispute storage d = _disputes[jobId];
        if (d.juryAt == 0) revert NoJury(jobId);
        uint64 evidenceEnd = d.juryAt + courtPhase;
        if (block.timestamp >= evidenceEnd) revert TooLate(evidenceEnd);
        if (seat >= SEATS || c.present & (1 << seat) == 0) revert BadSeat(seat);
        if (tokens.length != uint256(c.counts[seat]) * 4) revert EvidenceMismatch(seat);
        if (keccak256(abi.encodePacked(textHash, keccak256(tokens))) != c.outputs[seat]) revert EvidenceMismatch(seat);
        d.evidence |= uint8(1 << seat);
        emit EvidencePosted(jobId, seat, textHash, tokens);
    }

    /// A juror commits to its verdicts (2 bits per seat) after the evidence phase:
    /// commitment = keccak256(abi.encode(jobId, juror, verdicts, salt)).
    function commitVote(bytes32 jobId, bytes32 commitment) external {
        Dispute storage d = _disputes[jobId];
        uint256 j = _jurorIndex(jobId, d);
        uint64 opens = d.juryAt + courtPhase;
        if (block.timestamp < opens) revert TooEarly(opens);
        if (block.timestamp >= opens + courtPhase) revert TooLate(opens + courtPhase);
        if (commitment == bytes32(0)) revert ZeroCommitment();
        if (d.commits[j] != bytes32(0)) revert AlreadyCommitted(uint8(j));
        d.commits[j] = commitment;
        emit VoteCommitted(jobId, msg.sender);
    }

    function revealVote(bytes32 jobId, uint16 verdicts, bytes32 salt) external {
        Dispute storage d = _disputes[jobId];
        uint256 j = _jurorIndex(jobId, d);
        uint64 opens = d.juryAt + 2 * courtPhase;
        if (block.timestamp < opens) revert TooEarly(opens);
        if (block.timestamp >= opens + courtPhase) revert TooLate(opens + courtPhase);
        if (d.revealed & (1 << j) != 0) revert AlreadyRevealed(uint8(j));
        if (keccak256(abi.encode(jobId, msg.sender, verdicts, salt)) != d.commits[j]) revert CommitmentMismatch(uint8(j));
        d.verdicts[j] = verdicts;
        d.revealed |= uint8(1 << j);
        emit VoteRevealed(jobId, msg.sender, verdicts);
    }

    /// Close a contested job (anyone): with no dispute after disputeWindow, or a void one, the
    /// provisional outcome; with a jury, after its reveal phase, the jury's verdict.
    function resolve(Job calldata job, Contest calldata c) external nonReentrant {
        bytes32 jobId = _checkContest(job, c);
        Dispute memory d = _disputes[jobId];
        if (d.disputer == address(0) || d.void) {
            uint64 disputeEnd = c.contestedAt + disputeWindow;
            if (d.disputer == address(0) && block.timestamp < disputeEnd) revert TooEarly(disputeEnd);
            uint256 bond = d.disputer == address(0) ? 0 : _juryFee(job);
            _close(jobId, job, Outcome.Provisional, c, c.provisional, 0, 0, d, bond);
            return;
        }
        if (d.juryAt == 0) {
            // Nobody drew a jury within the draw window: void.
            if (block.number <= uint256(d.openedBlock) + DRAW_WINDOW) revert NoJury(jobId);
            _close(jobId, job, Outcome.Provisional, c, c.provisional, 0, 0, d, _juryFee(job));
            return;
        }
        uint64 courtEnd = d.juryAt + 3 * courtPhase;
        if (block.timestamp < courtEnd) revert TooEarly(courtEnd);
        _closeJudged(jobId, job, c, d);
    }

    // ---------------------------------------------------------------- views

    /// The consumer's slots: keccak256(abi.encode(job)) of an open job, keccak256(abi.encode(that,
    /// contest)) of a contested one, CLOSED (0x..01) or 0 when free.
    function slotsOf(address consumer) external view returns (bytes32[16] memory) {
        return _slots[consumer];
    }

    function jobSlot(address consumer, uint8 slot) external view returns (bytes32) {
        return _slots[consumer][slot];
    }

    function commitments(bytes32 jobId) external view returns (bytes32[5] memory) {
        return _commits[jobId];
    }

    function reveals(bytes32 jobId) external view returns (Reveal[5] memory) {
        return _reveals[jobId];
    }

    function disputes(bytes32 jobId) external view returns (Dispute memory) {
        return _disputes[jobId];
    }

    // ---------------------------------------------------------------- internals

    /// The job's id, if `job` is open and not contested (its slot holds exactly its hash).
    /// keccak256(jobId, blockhash(fromBlock), prevrandao), in the DRAW_WINDOW blocks after
    /// `fromBlock`, called by an externally owned account (a contract could draw, look, and revert).
    function _seed(bytes32 jobId, uint64 fromBlock) private view returns (bytes32) {
        if (msg.sender != tx.origin) revert DrawByContract();
        if (block.number <= fromBlock) revert TooEarly(fromBlock + 1);
        if (block.number > uint256(fromBlock) + DRAW_WINDOW) revert DrawExpired(fromBlock);
        return keccak256(abi.encode(jobId, blockhash(fromBlock), block.prevrandao));
    }

    function _addSeed(bytes32 seed, uint256 n) private view returns (bytes32) {
        if (msg.sender != tx.origin) revert DrawByContract();
        return keccak256(abi.encode(seed, n, block.prevrandao));
    }

    function _checkOpen(Job calldata job) private view returns (bytes32 jobId) {
        jobId = _jobId(job);
        if (job.slot >= RING || _slots[job.consumer][job.slot] != _jobHash()) revert JobNotOpen(jobId);
    }

    function _checkContest(Job calldata job, Contest calldata c) private view returns (bytes32 jobId) {
        jobId = _jobId(job);
        bytes32 h = keccak256(abi.encode(_jobHash(), c));
        if (job.slot >= RING || _slots[job.consumer][job.slot] != h) revert JobNotOpen(jobId);
    }

    function _jobId(Job calldata job) private pure returns (bytes32) {
        return keccak256(abi.encode(job.consumer, job.openBlock, job.slot));
    }

    /// keccak256(abi.encode(job)) for the Job that every entry point takes as its first argument:
    /// a static struct, so its encoding is the 640 bytes of calldata after the selector. A
    /// non-canonical encoding hashes differently from the canonical one stored at openJob, so it
    /// never passes a check.
    function _jobHash() private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            let p := mload(0x40)
            calldatacopy(p, 4, 640)
            h := keccak256(p, 640)
        }
    }

    function _store(Job calldata job, bytes32 value) private {
        _slots[job.consumer][job.slot] = value;
    }

    function _pool(Job calldata job) private pure returns (bytes32) {
        return keccak256(abi.encode(job.modelHash, job.group));
    }

    function _seatCount(Job calldata job) private pure returns (uint256 n) {
        while (n < SEATS && job.seats[n] != address(0)) ++n;
    }

    function _held(Job calldata job) private pure returns (uint256) {
        uint256 n = _seatCount(job);
        return uint256(job.maxTokens) * job.priceCap * ((n < FIRST_SEATS ? FIRST_SEATS : n) + 1);
    }

    function _juryFee(Job calldata job) private pure returns (uint256) {
        return uint256(job.maxTokens) * job.priceCap;
    }

    /// A result is valid when its token count is within the job; a signed count above it is a
    /// provable lie, slashed whatever else happens.
    function _record(Contest memory c, uint8 i, bytes32 outputHash, uint64 tokenCount, uint64 maxTokens) private pure {
        c.outputs[i] = outputHash;
        c.counts[i] = tokenCount;
        if (tokenCount > maxTokens) c.slashed |= uint8(1 << i);
        else c.present |= uint8(1 << i);
    }

    /// Every valid result agrees (and there are two or more): pay them all now. No valid result:
    /// refund. Anything else: contested, with the strict majority of two or more (of the seats
    /// whose full lock could be taken) as the provisional outcome.
    function _conclude(bytes32 jobId, Job calldata job, Contest memory c) private {
        (uint256 valid, uint256 best, uint256 bestMask, bool tie) = _majority(c);
        bool agreed = valid >= 2 && best == valid;
        if ((agreed || valid == 0) && c.slashed == 0) {
            c.provisional = uint8(bestMask);
            _payOut(jobId, job, valid == 0 ? Outcome.Refunded : Outcome.Agreed, c);
            return;
        }
        if (agreed || valid == 0) {
            // Agreed (or nothing valid) but a provable lie among them: lock the liars and slash them now.
            c.locks = registry.lockSeats(job.seats, job.prices, job.maxTokens, c.slashed);
            Dispute memory none;
            _close(jobId, job, valid == 0 ? Outcome.Refunded : Outcome.Agreed, c, uint8(bestMask), 0, 0, none, 0);
            return;
        }
        c.locks = registry.lockSeats(job.seats, job.prices, job.maxTokens, c.present | c.slashed);
        // The provisional outcome: a strict majority (more than half the valid results, two or
        // more) counting only seats that backed their full lock; a seat that could not is judged.
        uint256 provisional;
        if (!tie && best * 2 > valid) {
            uint256 backed;
            for (uint256 i; i < SEATS; ++i) {
                if (bestMask & (1 << i) != 0 && c.locks[i] >= registry.lockFor(job.maxTokens, job.prices[i])) {
                    provisional |= 1 << i;
                    ++backed;
                }
            }
            if (backed < 2 || backed * 2 <= valid) provisional = 0;
        }
        c.provisional = uint8(provisional);
        c.contestedAt = uint64(block.timestamp);
        _store(job, keccak256(abi.encode(_jobHash(), c)));
        emit JobContested(jobId, c);
    }

    function _majority(Contest memory c) private pure returns (uint256 valid, uint256 best, uint256 bestMask, bool tie) {
        // The common case first: every valid result equal to the first one.
        uint256 first = SEATS;
        bool same = true;
        for (uint256 i; i < SEATS; ++i) {
            if (c.present & (1 << i) == 0) continue;
            ++valid;
            if (first == SEATS) first = i;
            else if (c.outputs[i] != c.outputs[first] || c.counts[i] != c.counts[first]) same = false;
        }
        if (same) return (valid, valid, c.present, false);
        valid = 0;
        for (uint256 i; i < SEATS; ++i) {
            if (c.present & (1 << i) == 0) continue;
            ++valid;
            uint256 mask;
            uint256 n;
            for (uint256 k; k < SEATS; ++k) {
                if (c.present & (1 << k) != 0 && c.outputs[k] == c.outputs[i] && c.counts[k] == c.counts[i]) {
                    mask |= 1 << k;
                    ++n;
                }
            }
            if (n > best) (best, bestMask, tie) = (n, mask, false);
            else if (n == best && mask != bestMask) tie = true;
        }
    }

    function _closeJudged(bytes32 jobId, Job calldata job, Contest calldata c, Dispute memory d) private {
        uint256 jurors;
        for (uint256 j; j < 3; ++j) {
            if (d.jurors[j] != address(0)) ++jurors;
        }
        uint256 need = jurors / 2 + 1;
        uint256 paid;
        uint256 slashed = c.slashed;
        for (uint256 i; i < SEATS; ++i) {
            if (c.present & (1 << i) == 0) continue;
            (uint256 hard, uint256 soft) = _tally(d, i);
            if (d.evidence & (1 << i) == 0 || hard >= need) {
                slashed |= 1 << i; // hard fail, or it could not show what it signed
            } else if (hard + soft < need) {
                paid |= 1 << i; // passed
            }
        }
        // Who pays the jury: the disputer's bond when its dispute changed nothing in its favour,
        // else the consumer's jury reserve (verification is part of the price of a market).
        uint256 seat = _presentSeatOf(job, c, d.disputer);
        uint256 own = seat < SEATS ? 1 << seat : 0;
        // A disputer found wrong itself never wins, whatever else the jury found.
        bool won = slashed & own == 0
            && (slashed & c.present & ~own != 0 || (own != 0 && paid & own != 0 && c.provisional & own == 0)
                || (d.disputer == job.consumer && c.provisional & ~paid != 0));
        uint256 share = _juryFee(job) / jurors;
        uint256 revealed = (d.revealed & 1) + ((d.revealed >> 1) & 1) + ((d.revealed >> 2) & 1);
        Contest memory judged = c;
        judged.slashed = uint8(slashed);
        _close(jobId, job, Outcome.Judged, judged, uint8(paid), share, won ? 0 : share * revealed, d, _juryFee(job));
    }

    function _tally(Dispute memory d, uint256 seat) private pure returns (uint256 hard, uint256 soft) {
        for (uint256 j; j < 3; ++j) {
            if (d.revealed & (1 << j) == 0) continue;
            uint16 v = (d.verdicts[j] >> (2 * seat)) & 3;
            if (v == HARD) ++hard;
            else if (v == SOFT) ++soft;
        }
    }

    /// The fast path: pay the seats in c.provisional (tokenCount * price each), refund the rest.
    function _payOut(bytes32 jobId, Job calldata job, Outcome outcome, Contest memory c) private {
        _store(job, CLOSED);
        uint256[5] memory pays;
        for (uint256 i; i < SEATS; ++i) {
            if (c.provisional & (1 << i) != 0) pays[i] = uint256(c.counts[i]) * job.prices[i];
        }
        uint256 held = _held(job);
        registry.payOut(job.consumer, held, job.seats, pays);
        uint256 refund = held - pays[0] - pays[1] - pays[2] - pays[3] - pays[4];
        emit JobSettled(jobId, outcome, c.present, pays, 0, refund);
    }

    /// The slow path: release locks, pay `payMask` seats, slash c.slashed, pay revealed jurors
    /// `share` each (from the bond up to `fromBond`, the rest from the consumer's reserve), return
    /// the rest of the bond to the disputer and of the escrow to the consumer.
    function _close(
        bytes32 jobId,
        Job calldata job,
        Outcome outcome,
        Contest memory c,
        uint8 payMask,
        uint256 share,
        uint256 fromBond,
        Dispute memory d,
        uint256 bond
    ) private {
        _store(job, CLOSED);
        ProviderRegistry.Close memory cl;
        (cl.jobId, cl.consumer, cl.seats, cl.locks, cl.slashMask) = (jobId, job.consumer, job.seats, c.locks, c.slashed);
        cl.held = _held(job) + bond;
        uint256 paid;
        for (uint256 i; i < SEATS; ++i) {
            if (payMask & (1 << i) != 0) {
                cl.pays[i] = uint256(c.counts[i]) * job.prices[i];
                paid += cl.pays[i];
            }
        }
        uint256 juryPaid;
        if (share != 0) {
            for (uint256 j; j < 3; ++j) {
                if (d.revealed & (1 << j) != 0) {
                    cl.jurors[j] = d.jurors[j];
                    juryPaid += share;
                }
            }
            cl.juryShare = share;
        }
        (cl.bondPayer, cl.bondRefund) = (d.disputer, bond - fromBond);
        // Pays never exceed the escrow: each is at most maxTokens * priceCap; the jury's pay comes
        // from the bond (fromBond) or the consumer's reserve (one maxTokens * priceCap).
        cl.refund = cl.held - paid - juryPaid - cl.bondRefund;
        registry.close(cl);
        uint256[5] memory pays = cl.pays;
        emit JobSettled(jobId, outcome, c.present, pays, c.slashed, cl.refund);
        if (d.disputer != address(0)) emit JuryPaid(jobId, cl.jurors, share, cl.bondRefund);
    }

    function _presentSeatOf(Job calldata job, Contest calldata c, address who) private pure returns (uint256) {
        for (uint256 i; i < SEATS; ++i) {
            if (job.seats[i] == who && c.present & (1 << i) != 0) return i;
        }
        return SEATS;
    }

    function _jurorIndex(bytes32 jobId, Dispute storage d) private view returns (uint256) {
        if (d.juryAt == 0) revert NoJury(jobId);
        for (uint256 j; j < 3; ++j) {
            if (d.jurors[j] == msg.sender) return j;
        }
        revert NotJuror();
    }
}
