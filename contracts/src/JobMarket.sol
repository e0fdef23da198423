// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {ProviderRegistry} from "./ProviderRegistry.sol";

/// @title JobMarket — escrow, three-way verified settlement and the liveness paths of a job.
/// @notice A job is stored as ONE slot: the keccak256 of its parameters. Every later call passes
///         the parameters back and the market checks them against that hash; the JobOpened
///         event carries them for everyone else. The market holds no tokens: escrow, earnings,
///         stake and refunds are kept by the ProviderRegistry (the vault), which only this
///         market may move. Refunds become the consumer's credit there (pull payments).
///
///         Life of a job (all deadlines count from openedAt):
///           [0, settleWindow)            consumer: settle with signed results, replaceProvider
///             from deliveryWindow on       consumer may settle without a provider that has not
///                                          delivered (and not committed): its share is refunded
///           [0, settleWindow+commitWindow) providers: commitResult (provider-bound commitment)
///           [commitEnd, commitEnd+revealWindow) providers: revealResult
///           from revealEnd                 anyone: finalize (pays the revealed majority, refunds the rest)
contract JobMarket is EIP712, ReentrancyGuardTransient {

    struct Job {
        address consumer;
        bytes32 modelHash;
        bytes32 promptHash;
        uint64 maxTokens;
        uint64 priceCap;
        uint64 openedAt;
        address[3] providers;
        uint64[3] prices;
    }

    /// A provider's signed claim, signature in EIP-2098 compact form (r, vs); r == vs == 0 means
    /// "no result from this provider". Static, so calldata carries no offsets or lengths.
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

    enum Outcome {
        Majority, // two or three agreeing results: they are paid, a dissenter is slashed
        NoMajority // fewer than two agreeing results: full refund, nobody paid
    }

    bytes32 public constant RESULT_TYPEHASH = keccak256("Result(bytes32 jobId,bytes32 outputHash,uint64 tokenCount)");
    bytes32 private constant CLOSED = bytes32(uint256(1));
    uint64 public constant MAX_TOKENS_LIMIT = 1 << 20;

    ProviderRegistry public immutable registry;
    uint64 public immutable deliveryWindow;
    uint64 public immutable settleWindow;
    uint64 public immutable commitWindow;
    uint64 public immutable revealWindow;

    /// keccak256(abi.encode(Job)) while open, CLOSED after settlement, 0 if never opened.
    mapping(bytes32 => bytes32) public jobHashes;
    mapping(bytes32 => bytes32[3]) internal _commits;
    mapping(bytes32 => Reveal[3]) internal _reveals;

    event JobOpened(
        bytes32 indexed jobId,
        address indexed consumer,
        bytes32 indexed modelHash,
        bytes32 promptHash,
        uint64 maxTokens,
        uint64 priceCap,
        uint64 openedAt,
        address[3] providers,
        uint64[3] prices
    );
    event ProviderReplaced(
        bytes32 indexed jobId, uint8 index, address indexed oldProvider, address indexed newProvider, uint64 price
    );
    event ResultCommitted(bytes32 indexed jobId, uint8 index, address indexed provider, bytes32 commitment);
    event ResultRevealed(bytes32 indexed jobId, uint8 index, address indexed provider, bytes32 outputHash, uint64 tokenCount);
    event JobSettled(
        bytes32 indexed jobId,
        Outcome outcome,
        bytes32 outputHash,
        uint64[3] tokenCounts,
        uint256[3] paid,
        uint8 slashMask,
        uint256 refund
    );

    error BadMaxTokens(uint256 maxTokens);
    error ZeroPriceCap();
    error DuplicateProvider(address provider);
    error ConsumerIsProvider();
    error JobExists(bytes32 jobId);
    error JobNotOpen(bytes32 jobId);
    error JobMismatch(bytes32 jobId);
    error NotConsumer();
    error NotProvider(uint8 index);
    error BadIndex(uint8 index);
    error TooEarly(uint64 opensAt);
    error TooLate(uint64 closedAt);
    error BadSignature(uint8 index);
    error MissingResult(uint8 index);
    error AlreadyCommitted(uint8 index);
    error NoCommitment(uint8 index);
    error ZeroCommitment();
    error CommitmentMismatch(uint8 index);
    error AlreadyRevealed(uint8 index);

    constructor(
        ProviderRegistry registry_,
        uint64 deliveryWindow_,
        uint64 settleWindow_,
        uint64 commitWindow_,
        uint64 revealWindow_
    ) EIP712("Meshmarket", "1") {
        require(deliveryWindow_ <= settleWindow_, "delivery window longer than settle window");
        registry = registry_;
        deliveryWindow = deliveryWindow_;
        settleWindow = settleWindow_;
        commitWindow = commitWindow_;
        revealWindow = revealWindow_;
    }

    // ---------------------------------------------------------------- consumer

    /// Open a job on three distinct providers registered for `modelHash` at or under `priceCap`.
    /// Escrows exactly maxTokens * sum(price_i) in the registry, spending the caller's credit there
    /// first (approve the registry, or deposit() into it, beforehand).
    /// The job id is keccak256(abi.encode(msg.sender, salt)): the consumer knows it before mining.
    function openJob(
        bytes32 salt,
        bytes32 modelHash,
        bytes32 promptHash,
        uint64 maxTokens,
        uint64 priceCap,
        address[3] calldata providers
    ) external nonReentrant returns (bytes32 jobId) {
        if (maxTokens == 0 || maxTokens > MAX_TOKENS_LIMIT) revert BadMaxTokens(maxTokens);
        if (priceCap == 0) revert ZeroPriceCap();
        if (providers[0] == providers[1] || providers[0] == providers[2]) revert DuplicateProvider(providers[0]);
        if (providers[1] == providers[2]) revert DuplicateProvider(providers[1]);
        if (msg.sender == providers[0] || msg.sender == providers[1] || msg.sender == providers[2]) {
            revert ConsumerIsProvider();
        }
        jobId = keccak256(abi.encode(msg.sender, salt));
        if (jobHashes[jobId] != bytes32(0)) revert JobExists(jobId);

        uint64[3] memory prices = registry.openJobFunds(msg.sender, modelHash, priceCap, maxTokens, providers);
        uint64 openedAt = uint64(block.timestamp);
        jobHashes[jobId] = keccak256(
            abi.encode(msg.sender, modelHash, promptHash, maxTokens, priceCap, openedAt, providers, prices)
        );
        emit JobOpened(jobId, msg.sender, modelHash, promptHash, maxTokens, priceCap, openedAt, providers, prices);
    }

    /// Replace provider `index` (it failed, refused or stalled) before the settle deadline. The
    /// replaced provider is released unpaid; the escrow follows the new price. A provider that
    /// has committed a result cannot be replaced. Deadlines do not move.
    function replaceProvider(bytes32 jobId, Job calldata job, uint8 index, address newProvider) external nonReentrant {
        _checkOpen(jobId, job);
        if (msg.sender != job.consumer) revert NotConsumer();
        if (index > 2) revert BadIndex(index);
        uint64 settleEnd = job.openedAt + settleWindow;
        if (block.timestamp >= settleEnd) revert TooLate(settleEnd);
        if (_commits[jobId][index] != bytes32(0)) revert AlreadyCommitted(index);
        if (newProvider == job.consumer) revert ConsumerIsProvider();
        for (uint256 i; i < 3; ++i) {
            if (job.providers[i] == newProvider) revert DuplicateProvider(newProvider);
        }

        Job memory next = job;
        next.providers[index] = newProvider;
        next.prices[index] = registry.swapProvider(
            job.consumer, job.modelHash, job.priceCap, job.maxTokens, job.providers[index], job.prices[index], newProvider
        );
        jobHashes[jobId] = keccak256(abi.encode(next));
        emit ProviderReplaced(jobId, index, job.providers[index], newProvider, next.prices[index]);
    }

    /// The consumer settles with the providers' EIP-712 signed results. All three are required
    /// until deliveryWindow has passed; after it, a provider that has not delivered (and not
    /// committed on-chain) may be left out, and its share is refunded.
    function settle(bytes32 jobId, Job calldata job, SignedResult[3] calldata results) external nonReentrant {
        _checkOpen(jobId, job);
        if (msg.sender != job.consumer) revert NotConsumer();
        uint64 settleEnd = job.openedAt + settleWindow;
        if (block.timestamp >= settleEnd) revert TooLate(settleEnd);

        bytes32[3] memory keys;
        uint64[3] memory counts;
        uint256 present;
        for (uint8 i; i < 3; ++i) {
            SignedResult calldata r = results[i];
            if (r.r == bytes32(0) && r.vs == bytes32(0)) {
                uint64 deliverEnd = job.openedAt + deliveryWindow;
                if (block.timestamp < deliverEnd) revert MissingResult(i);
                if (_commits[jobId][i] != bytes32(0)) revert AlreadyCommitted(i);
                continue;
            }
            bytes32 digest = _hashTypedDataV4(keccak256(abi.encode(RESULT_TYPEHASH, jobId, r.outputHash, r.tokenCount)));
            (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, r.r, r.vs);
            if (err != ECDSA.RecoverError.NoError || signer != job.providers[i]) revert BadSignature(i);
            keys[i] = keccak256(abi.encode(r.outputHash, r.tokenCount));
            counts[i] = r.tokenCount;
            present |= 1 << i;
        }
        bytes32[3] memory outputs = [results[0].outputHash, results[1].outputHash, results[2].outputHash];
        _close(jobId, job, keys, outputs, counts, present, 0);
    }

    // ---------------------------------------------------------------- providers (fallback path)

    /// Provider `index` binds itself to a result without revealing it:
    /// commitment = keccak256(abi.encode(jobId, provider, outputHash, tokenCount, salt)).
    /// The provider's address inside the commitment means a copied commitment never reveals.
    function commitResult(bytes32 jobId, Job calldata job, uint8 index, bytes32 commitment) external {
        _checkOpen(jobId, job);
        if (index > 2) revert BadIndex(index);
        if (msg.sender != job.providers[index]) revert NotProvider(index);
        uint64 commitEnd = job.openedAt + settleWindow + commitWindow;
        if (block.timestamp >= commitEnd) revert TooLate(commitEnd);
        if (_commits[jobId][index] != bytes32(0)) revert AlreadyCommitted(index);
        if (commitment == bytes32(0)) revert ZeroCommitment(); // zero means "none" in storage
        _commits[jobId][index] = commitment;
        emit ResultCommitted(jobId, index, msg.sender, commitment);
    }

    /// Reveal after every commitment is final, so nobody can commit to what another revealed.
    function revealResult(bytes32 jobId, Job calldata job, uint8 index, bytes32 outputHash, uint64 tokenCount, bytes32 salt)
        external
    {
        _checkOpen(jobId, job);
        if (index > 2) revert BadIndex(index);
        uint64 commitEnd = job.openedAt + settleWindow + commitWindow;
        if (block.timestamp < commitEnd) revert TooEarly(commitEnd);
        uint64 revealEnd = commitEnd + revealWindow;
        if (block.timestamp >= revealEnd) revert TooLate(revealEnd);
        bytes32 commitment = _commits[jobId][index];
        if (commitment == bytes32(0)) revert NoCommitment(index);
        if (_reveals[jobId][index].revealed) revert AlreadyRevealed(index);
        address provider = job.providers[index];
        if (keccak256(abi.encode(jobId, provider, outputHash, tokenCount, salt)) != commitment) {
            revert CommitmentMismatch(index);
        }
        _reveals[jobId][index] = Reveal(outputHash, tokenCount, true);
        emit ResultRevealed(jobId, index, provider, outputHash, tokenCount);
    }

    /// After the reveal window anyone may close a job the consumer did not settle: the revealed
    /// majority is paid, a revealed dissenter slashed, everything else refunded to the consumer.
    /// A provider that committed and never revealed is slashed too: its commitment stopped the
    /// consumer from settling without it or replacing it, so withholding the reveal would be a
    /// free veto over everyone's pay.
    function finalize(bytes32 jobId, Job calldata job) external nonReentrant {
        _checkOpen(jobId, job);
        uint64 revealEnd = job.openedAt + settleWindow + commitWindow + revealWindow;
        if (block.timestamp < revealEnd) revert TooEarly(revealEnd);
        bytes32[3] memory keys;
        bytes32[3] memory outputs;
        uint64[3] memory counts;
        uint256 present;
        uint256 withheld;
        for (uint8 i; i < 3; ++i) {
            Reveal memory r = _reveals[jobId][i];
            if (!r.revealed) {
                if (_commits[jobId][i] != bytes32(0)) withheld |= 1 << i;
                continue;
            }
            keys[i] = keccak256(abi.encode(r.outputHash, r.tokenCount));
            outputs[i] = r.outputHash;
            counts[i] = r.tokenCount;
            present |= 1 << i;
        }
        delete _commits[jobId];
        delete _reveals[jobId];
        _close(jobId, job, keys, outputs, counts, present, withheld);
    }

    // ---------------------------------------------------------------- views

    function jobIdFor(address consumer, bytes32 salt) external pure returns (bytes32) {
        return keccak256(abi.encode(consumer, salt));
    }

    function hashJob(Job calldata job) external pure returns (bytes32) {
        return keccak256(abi.encode(job));
    }

    function escrowOf(Job calldata job) external pure returns (uint256) {
        return uint256(job.maxTokens) * (uint256(job.prices[0]) + job.prices[1] + job.prices[2]);
    }

    function isOpen(bytes32 jobId) external view returns (bool) {
        bytes32 h = jobHashes[jobId];
        return h != bytes32(0) && h != CLOSED;
    }

    function commitments(bytes32 jobId) external view returns (bytes32[3] memory) {
        return _commits[jobId];
    }

    function reveals(bytes32 jobId) external view returns (Reveal[3] memory) {
        return _reveals[jobId];
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ---------------------------------------------------------------- internals

    function _checkOpen(bytes32 jobId, Job calldata job) private view {
        bytes32 h = jobHashes[jobId];
        if (h == bytes32(0) || h == CLOSED) revert JobNotOpen(jobId);
        if (h != keccak256(abi.encode(job))) revert JobMismatch(jobId);
    }

    /// Majority rule over the present results. A result is a vote for (outputHash, tokenCount);
    /// a claim of more tokens than maxTokens is provably false and never counts, and is slashed.
    /// `withheld` marks committed-but-unrevealed providers, slashed whatever the outcome.
    function _close(
        bytes32 jobId,
        Job calldata job,
        bytes32[3] memory keys,
        bytes32[3] memory outputs,
        uint64[3] memory counts,
        uint256 present,
        uint256 withheld
    ) private {
        jobHashes[jobId] = CLOSED;
        uint256 valid;
        for (uint256 i; i < 3; ++i) {
            if (present & (1 << i) != 0 && counts[i] <= job.maxTokens) valid |= 1 << i;
        }
        // Find the agreeing set: a key shared by at least two valid votes.
        uint256 agree;
        if (valid & 3 == 3 && keys[0] == keys[1]) agree = 3;
        if (valid & 5 == 5 && keys[0] == keys[2]) agree |= 5;
        if (valid & 6 == 6 && keys[1] == keys[2]) agree |= 6;

        uint256[3] memory pays;
        uint256 slashMask = (present & ~valid) | withheld;
        uint256 payTotal;
        bytes32 majorityOutput;
        if (agree != 0) {
            for (uint256 i; i < 3; ++i) {
                if (agree & (1 << i) != 0) {
                    pays[i] = uint256(counts[i]) * job.prices[i];
                    payTotal += pays[i];
                    majorityOutput = outputs[i];
                } else if (present & (1 << i) != 0) {
                    slashMask |= 1 << i;
                }
            }
        }
        // Valid counts are <= maxTokens, so payTotal <= maxTokens * sum(prices) = escrow.
        uint256 refund = uint256(job.maxTokens) * (uint256(job.prices[0]) + job.prices[1] + job.prices[2]) - payTotal;
        registry.closeJob(jobId, job.consumer, job.maxTokens, job.providers, job.prices, pays, slashMask);
        emit JobSettled(
            jobId, agree != 0 ? Outcome.Majority : Outcome.NoMajority, majorityOutput, counts, pays, uint8(slashMask), refund
        );
    }
}
