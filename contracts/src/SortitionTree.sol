// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title SortitionTree — a stake-weighted sum tree for draws, read as its block began.
/// @notice Protocol v3's pool (docs/design/PROTOCOL_V3.md §2.2, decision D3). Each owner holds one
///         leaf with a weight; `draw(seed)` picks an owner with probability weight / total.
///
/// Layout. A 4-ary tree whose internal nodes each take ONE storage slot: the weights of the node's
/// four children (the sums of their subtrees, 4 × uint48) and a uint64 stamp (the block of the
/// node's last change). A draw therefore reads one slot per level: ⌈log₄ n⌉ slots for n leaves (2 at
/// 16, 4 at 256, 6 at 4,096), plus the header and the drawn leaf's owner. Nodes are addressed by
/// (height, position): the leaves are height 0, node (h, p) has children (h-1, 4p … 4p+3), the root
/// is (height, 0). The tree grows by a new root above the old one (the old root becomes child 0),
/// so no slot ever moves; heap indices (children 4i+1 … 4i+4) would renumber every node instead.
///
/// Read as the block began. The first change of a node in a block first copies the node's slot to
/// `before[node]`; a draw reads `before[node]` for a node stamped in its own block. The header keeps
/// its block-start height and member count the same way. So nothing done in a block (a stake
/// change, an exit, a new owner) moves a draw made in that block: whoever sees the seed cannot react
/// to it in the same block (v2's CR-1, generalised to the tree). Stamps are full block numbers in
/// 64 bits: a comparison never aliases an old block with the current one (v2's 24-bit tag did, F9).
///
/// Zero weight. Setting a weight of 0 removes the owner: its leaf's weight is 0, a subtree of weight
/// 0 is never entered, so a removed or never-staked owner can never be drawn and costs a draw
/// nothing (F4). A freed leaf keeps its owner until it is reused, which happens only in a later
/// block: a draw in the freeing block may still land on it (its weight as the block began) and
/// must find the owner that weight belonged to.
library SortitionTree {
    /// The most one leaf, and one subtree, may weigh: 2.8·10¹⁴ base units, ~2.8 M × weightCap.
    uint256 internal constant MAX_WEIGHT = type(uint48).max;

    uint256 private constant MASK48 = (1 << 48) - 1;
    uint256 private constant WEIGHTS = (1 << 192) - 1; // the four child weights of a node slot
    uint256 private constant STAMP_SHIFT = 192;

    /// One slot (240 bits). The *AtStart fields hold the block-start values when stamp == block.number.
    struct Header {
        uint8 height; // levels of node slots above the leaves; 0 for a tree never used
        uint8 heightAtStart;
        uint32 members; // leaves of nonzero weight
        uint32 membersAtStart;
        uint32 leaves; // leaf indices handed out so far (a new one is the next index)
        uint32 freeHead; // freed leaves waiting for reuse: the queue [freeHead, freeTail)
        uint32 freeTail;
        uint64 stamp; // block of the header's last change
    }

    struct Tree {
        Header header;
        mapping(uint256 => uint256) nodes; // key(h, p) => 4 × uint48 weights | uint64 stamp << 192
        mapping(uint256 => uint256) before; // key(h, p) => the node slot as its stamp's block began
        mapping(uint256 => address) leafOwner; // leaf => owner (kept after removal until reused)
        mapping(address => uint256) leafOf; // owner => leaf + 1 (0: no leaf)
        mapping(uint256 => uint256) freed; // queue position => leaf | block it was freed << 32
    }

    error WeightTooLarge(uint256 weight);
    error WeightOverflow();
    error ZeroOwner();

    // ------------------------------------------------------------------ writes

    /// Give `owner` weight `weight` (0 removes it). A change is invisible to draws of this block.
    function set(Tree storage t, address owner, uint256 weight) internal {
        if (owner == address(0)) revert ZeroOwner(); // address(0) is what an empty draw returns
        if (weight > MAX_WEIGHT) revert WeightTooLarge(weight);
        uint256 leafPlus1 = t.leafOf[owner];
        if (leafPlus1 == 0) {
            if (weight != 0) _add(t, owner, weight);
        } else if (weight == 0) {
            _remove(t, owner, leafPlus1 - 1);
        } else {
            _setLeaf(t, leafPlus1 - 1, weight, t.header.height);
        }
    }

    function remove(Tree storage t, address owner) internal {
        set(t, owner, 0);
    }

    // ------------------------------------------------------------------ reads

    /// An owner drawn with probability weight / total, from the tree as this block began; address(0)
    /// when that tree weighs nothing. `seed` must be unknown to whoever could change the tree before
    /// this block (the caller's job); it is reduced modulo the total (bias < total / 2²⁵⁶).
    function draw(Tree storage t, uint256 seed) internal view returns (address) {
        uint256 height = _heightAtStart(t.header);
        if (height == 0) return address(0);
        uint256 s = _view(t, _key(height, 0));
        uint256 weight = _sum(s);
        if (weight == 0) return address(0);
        uint256 u = seed % weight;
        uint256 pos;
        unchecked {
            // Invariant: u < the sum of s's four weights. A child of weight 0 never satisfies
            // u < w, so it is never entered; if none of the first three holds u, the fourth does.
            for (uint256 level = height; ; ) {
                uint256 c;
                for (; c < 3; ++c) {
                    uint256 w = s & MASK48;
                    if (u < w) break;
                    u -= w;
                    s >>= 48;
                }
                pos = (pos << 2) | c;
                if (--level == 0) break;
                s = _view(t, _key(level, pos));
            }
        }
        return t.leafOwner[pos];
    }

    /// The total weight now (after this block's changes so far).
    function total(Tree storage t) internal view returns (uint256) {
        uint256 height = t.header.height;
        return height == 0 ? 0 : _sum(t.nodes[_key(height, 0)]);
    }

    /// The total weight a draw in this block divides by: the tree as this block began.
    function totalAtBlockStart(Tree storage t) internal view returns (uint256) {
        uint256 height = _heightAtStart(t.header);
        return height == 0 ? 0 : _sum(_view(t, _key(height, 0)));
    }

    /// How many owners have nonzero weight now.
    function members(Tree storage t) internal view returns (uint256) {
        return t.header.members;
    }

    /// How many owners had nonzero weight as this block began (what capacity rules should read).
    function membersAtBlockStart(Tree storage t) internal view returns (uint256) {
        Header memory h = t.header;
        return h.stamp == block.number ? h.membersAtStart : h.members;
    }

    function weightOf(Tree storage t, address owner) internal view returns (uint256) {
        uint256 leafPlus1 = t.leafOf[owner];
        if (leafPlus1 == 0) return 0;
        uint256 leaf = leafPlus1 - 1;
        return (t.nodes[_key(1, leaf >> 2)] >> (48 * (leaf & 3))) & MASK48;
    }

    // ------------------------------------------------------------------ internals

    /// A new owner: reuse the oldest leaf freed before this block, else take a new leaf (growing a
    /// level when the tree is full).
    function _add(Tree storage t, address owner, uint256 weight) private {
        Header memory h = _begin(t.header);
        uint256 leaf = type(uint256).max;
        if (h.freeHead != h.freeTail) {
            uint256 entry = t.freed[h.freeHead];
            if (entry >> 32 < block.number) {
                leaf = uint32(entry);
                delete t.freed[h.freeHead];
                ++h.freeHead;
            }
        }
        if (leaf == type(uint256).max) {
            leaf = h.leaves;
            h.leaves = uint32(leaf + 1); // checked: 2³² leaves at most
            if (h.height == 0) {
                h.height = 1;
            } else if (leaf == 1 << (2 * uint256(h.height))) {
                // Full: a new root whose child 0 is the old root. Draws of this block keep using the
                // old root (heightAtStart), which this does not change.
                uint256 sum = _sum(t.nodes[_key(h.height, 0)]);
                if (sum > MAX_WEIGHT) revert WeightOverflow();
                _store(t, _key(uint256(h.height) + 1, 0), 0, sum);
                ++h.height;
            }
        }
        t.leafOwner[leaf] = owner;
        t.leafOf[owner] = leaf + 1;
        ++h.members;
        t.header = h;
        _setLeaf(t, leaf, weight, h.height);
    }

    /// Weight 0 and the leaf queued for reuse in a later block. The leaf keeps its owner until then:
    /// a draw in this block reads the leaf's weight as the block began and must find who held it.
    function _remove(Tree storage t, address owner, uint256 leaf) private {
        Header memory h = _begin(t.header);
        _setLeaf(t, leaf, 0, h.height);
        delete t.leafOf[owner];
        t.freed[h.freeTail] = leaf | (block.number << 32);
        h.freeTail += 1;
        --h.members;
        t.header = h;
    }

    /// Set a leaf's weight and carry the difference up to the root: one slot read and written per level.
    function _setLeaf(Tree storage t, uint256 leaf, uint256 weight, uint256 height) private {
        uint256 key = _key(1, leaf >> 2);
        uint256 s = t.nodes[key];
        uint256 shift = 48 * (leaf & 3);
        uint256 old = (s >> shift) & MASK48;
        if (old == weight) return;
        _store(t, key, s, (s & WEIGHTS & ~(MASK48 << shift)) | (weight << shift));
        uint256 pos = leaf >> 2;
        for (uint256 level = 2; level <= height; ++level) {
            key = _key(level, pos >> 2);
            s = t.nodes[key];
            shift = 48 * (pos & 3);
            uint256 w = (s >> shift) & MASK48;
            w = weight > old ? w + (weight - old) : w - (old - weight);
            if (w > MAX_WEIGHT) revert WeightOverflow();
            _store(t, key, s, (s & WEIGHTS & ~(MASK48 << shift)) | (w << shift));
            pos >>= 2;
        }
    }

    /// Write a node's weights, keeping the slot as the block began on its first change in the block.
    /// A slot still 0 was never written, so its block-start value is already what `before` holds (0).
    function _store(Tree storage t, uint256 key, uint256 old, uint256 weights) private {
        if (old != 0 && old >> STAMP_SHIFT != block.number) t.before[key] = old;
        t.nodes[key] = weights | (uint256(uint64(block.number)) << STAMP_SHIFT);
    }

    /// The header, made ready for a change in this block: its block-start fields set on the first one.
    function _begin(Header storage stored) private view returns (Header memory h) {
        h = stored;
        if (h.stamp != block.number) {
            (h.heightAtStart, h.membersAtStart, h.stamp) = (h.height, h.members, uint64(block.number));
        }
    }

    function _heightAtStart(Header storage stored) private view returns (uint256) {
        Header memory h = stored;
        return h.stamp == block.number ? h.heightAtStart : h.height;
    }

    /// A node slot as this block began.
    function _view(Tree storage t, uint256 key) private view returns (uint256 s) {
        s = t.nodes[key];
        if (s >> STAMP_SHIFT == block.number) s = t.before[key];
    }

    function _sum(uint256 s) private pure returns (uint256) {
        return (s & MASK48) + ((s >> 48) & MASK48) + ((s >> 96) & MASK48) + ((s >> 144) & MASK48);
    }

    function _key(uint256 height, uint256 pos) private pure returns (uint256) {
        return (height << 32) | pos;
    }
}
