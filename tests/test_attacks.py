"""Attacks from the incentives audit (issue 9), run end to end against the real contracts on a real
Anvil, with the honest parties' real software.

Each test names one attack and the PROPERTY the product promises; it runs the attack's scenario
(tests/attack_scenarios.py, shared with bench/attacks.py, which tabulates cost, gain and loss) and
ends with the property as plain assertions on stakes, pay and costs; each message carries every
number the scenario measured (`Measured.say`).

History: A1-A11 were written against the v1 contracts, where every one of them failed on its
property assertion (the attack worked); A12-A19 were found against v2 (the committee drawn by
the contract); A20-A22 against the contracts of 62f5953 (a draw's seed includes the draw block's
prevrandao; full juries; invited meshes; thaw-backed locks; a minimum jury fee). The properties
are unchanged or stronger, except where a design decision changed them: then the test asserts
the new documented property and says so (A5, A10, A12: residuals by design).

Honest parties run their own code (see tests/attack_scenarios.py): the provider's ClaimKeeper
and CourtKeeper, the consumer's journal and settle_pending, the consumer library's whole query
over libp2p (A8, A9), the ledger's Indexer and Reputation (A7, A11). Jurors' scorer: a judge that
knows the honest outputs (the scorer is tested in tests/test_scorer.py); where the property is
the contract's rule whatever jurors say (A16), the lazy jurors' votes are sent directly.

A20a, A20b (found): on Ethereum proof-of-stake a block's prevrandao is public one slot ahead
(EIP-4399), so a pool could be rearranged in the draw's own block for a seed known in advance: the
registry's draw reads each pool as it was when its block began (ProviderRegistry._keep), which
these tests show. A21 (found): a pool too small to seat a jury lets a cartel of two seats be paid;
an honest consumer refuses such a pool (consumer.discovery.check_jury).

F1-F9 (issue 17): an independent audit of the v2 contracts. Each test asserts the property protocol
v3 defends (docs/design/PROTOCOL_V3.md §6) and fails on today's contracts, where the attack works:
a strict xfail names the finding until its step of v3 lands, when the test must pass (a strict xfail
that passes fails the suite). Their failure messages carry the attack's numbers on v2.
"""

from __future__ import annotations

import pytest

import tests.attack_scenarios as sc
from meshmarket.mesh.lifecycle import DRAW_WINDOW
from meshmarket.mesh.market import OUTCOME_AGREED, OUTCOME_JUDGED, OUTCOME_PROVISIONAL
from tests.conftest import FUNDS, MODEL, PRICE, STAKE

P = sc.P
HONEST_PAY = sc.HONEST_PAY
LOCK = sc.lock_for(sc.MAX_TOKENS)
FEE = sc.MAX_TOKENS * PRICE  # a 128-token job's jury fee at the price cap


def test_the_scenarios_run_in_this_worlds_market():
    """tests/attack_scenarios.py is imported by the bench without pytest: its copy of the world's
    constants must be conftest's."""
    assert (sc.MODEL, sc.PRICE, sc.STAKE, sc.FUNDS) == (MODEL, PRICE, STAKE, FUNDS)


# ############################################################################# A1 — targeting

def test_a1_consumer_with_two_sybils_burns_an_honest_providers_stake(market, tmp_path):
    """A1 — a consumer with two sybil providers wants an honest provider's stake burned.

    v1: the consumer named the victim and two of its own provider accounts as the committee; the
    sybils' matching bogus results outvoted the victim, whose lock was burned. Now nobody names a
    committee: the victim never sits in the attacker's own group, cannot be joined in its own mesh
    uninvited, and in the open market the attacker re-rolls drawn requests until the committee is
    the victim and both sybils; their bogus majority is disputed by the victim's keeper and judged
    by the pool's other providers (their court keepers).

    PROPERTY: an honest provider's stake is never reduced by a job in which it delivered an honest,
    validly signed answer, and it is paid; the attack costs the attacker tokens.
    """
    r = sc.a1_targeting(market, tmp_path)
    f = r.facts
    assert f["victim_in_attackers_group"] is False and f["victim_mesh_refuses_sybil"] == "NotInvited", r.say()
    assert f["victim_stake_lost"] == 0, "honest provider's stake was burned: " + r.say()
    assert f["victim_paid"] == HONEST_PAY, "the victim's honest answer was not paid: " + r.say()
    assert f["slash_mask"] == f["sybil_mask"], "the sybils' bogus majority was not convicted: " + r.say()
    assert r.attacker_net <= -2 * LOCK, "the attack cost the attacker less than its sybils' locks: " + r.say()


# ############################################################################# A2, A3 — delivered work is paid

def test_a2_replacing_an_uncontacted_slot_gets_committed_honest_providers_slashed(market, tmp_path):
    """A2 — honest providers slashed for "commit without reveal" (v1: the consumer replaced a slot
    after the commits, the job hash changed, the keepers dropped their claims). v2: the only change
    to a drawn job is addSeat, before deliveryEnd; the keepers follow SeatAdded and commit with the
    job's current tuple (the stale one is refused).

    PROPERTY: a provider that delivered and committed is never slashed, and is paid.
    """
    r = sc.a2_change_job_under_claims(market, tmp_path)
    f = r.facts
    assert f["add_seat_at_delivery_end"] == "TooLate", "the job changed after commits opened: " + r.say()
    assert f["stake_lost"] == [0, 0], "honest committed providers were slashed: " + r.say()
    assert f["paid"] == [HONEST_PAY] * 2, "honest committed providers were not paid: " + r.say()
    assert r.profit == 0 and r.victim_loss == 0, r.say()


def test_a3a_free_inference_settle_with_everyone_missing_at_the_delivery_deadline(market, tmp_path):
    """A3 (a) — free inference by settling with every delivered result marked missing at the first
    moment allowed (v1: the delivery deadline, one block before the keepers could commit). v2: a
    seat may be left out only from claimEnd, and only if it did not commit; the keepers commit in
    the claim window.

    PROPERTY: every provider that delivered a signed result is paid tokenCount x price.
    """
    r = sc.a3a_settle_all_missing(market, tmp_path)
    assert r.facts["leave_out"] == {"before_delivery_end": "MissingResult", "at_delivery_end": "MissingResult",
                                    "at_claim_end": "AlreadyCommitted"}, r.say()
    assert r.facts["paid"] == [HONEST_PAY] * 3, "providers that delivered were not paid: " + r.say()


def test_a3b_free_inference_a_replacement_makes_every_provider_drop_its_claim(market, tmp_path):
    """A3 (b) — free inference by changing the job after the answers (v1: a replacement made every
    keeper drop its claim). v2: the attacker adds a seat, never contacts it, and leaves everyone
    out at claimEnd; the keepers committed with the grown tuple.

    PROPERTY: every provider that delivered a signed result is paid tokenCount x price.
    """
    r = sc.a3b_grow_and_leave_out(market, tmp_path)
    assert r.facts["leave_out"] == {"at_claim_end": "AlreadyCommitted"}, r.say()
    assert r.facts["paid"] == [HONEST_PAY] * 3, "providers that delivered were not paid: " + r.say()


def test_a3c_free_inference_a_replacement_front_runs_the_providers_commits(market, tmp_path):
    """A3 (c) — free inference by front-running the keepers' commits (v1: a replacement mined first
    made every commit revert). v2: the keepers' commits (their own transactions, sent for the first
    block at deliveryEnd) and the attacker's addSeat and settle-with-everyone-missing, with higher
    tips, in one block: the attacker's go first and are refused; the commits land.

    PROPERTY: every provider that delivered a signed result is paid tokenCount x price.
    """
    r = sc.a3c_front_run_commits(market, tmp_path)
    f = r.facts
    assert f["front_ran_first"] and f["front_runs"] == [0, 0], "the front-run was not refused: " + r.say()
    assert f["commits_in_that_block"] == [1, 1, 1], r.say()
    assert f["paid"] == [HONEST_PAY] * 3, "providers that delivered were not paid: " + r.say()


def test_a3d_free_inference_two_sybils_vote_for_no_majority(market, tmp_path):
    """A3 (d) — free inference from one honest provider: it sits with two sybils (re-rolled), which
    sign two different bogus outputs: no provisional majority, nobody paid without a jury. The
    victim's keeper disputes; the jury passes it and hard-fails the sybils.

    PROPERTY: every provider that delivered a signed result is paid tokenCount x price, and the
    attack costs the attacker tokens.
    """
    r = sc.a3d_no_majority(market, tmp_path)
    f = r.facts
    assert f["provisional"] == 0 and f["outcome"] == OUTCOME_JUDGED, r.say()
    assert f["victim_paid"] == HONEST_PAY, "the provider that delivered was not paid: " + r.say()
    assert f["slash_mask"] == f["sybil_mask"] and r.profit < 0, r.say()


# ############################################################################# A4 — cartel

def test_a4_two_colluders_commit_at_open_and_are_paid_for_a_bogus_output(market, tmp_path):
    """A4 — a two-provider cartel (v1: committed at open, could not be replaced, was paid and got
    the honest third slashed). v2: the cartel holds two seats, commits and reveals a bogus maxTokens
    claim in the fallback; the honest consumer's `mesh settle` can neither settle without it nor
    leave it out, and finalizes: the cartel is the provisional majority. The honest seat's keeper
    disputes; jurors' court keepers hard-fail the cartel.

    PROPERTY: the honest provider is paid and not slashed; the colluders' profit is negative.
    """
    r = sc.a4_cartel(market, tmp_path)
    f = r.facts
    assert f["provisional"] == 0b111 & ~(1 << f["p0_seat"]), "test harness: " + r.say()
    assert f["honest_stake_lost"] == 0, "the honest provider was slashed: " + r.say()
    assert f["honest_paid"] == HONEST_PAY, "the honest provider was not paid: " + r.say()
    assert [x < 0 for x in f["cartel_profit"]] == [True, True], "the colluders profited: " + r.say()


# ############################################################################# A5, A10 — copying, withholding

def test_a5_copier_front_runs_the_settle_with_a_commitment_to_the_copied_result(market, tmp_path):
    """A5 — copy by front-running (v1: the copier committed to the copied result ahead of the
    consumer's settle, forced the slow path and was paid). v2: that commit comes after commits
    closed and is refused (real mempool). The copier's best is a blind commitment in the claim
    window (design decision, documented: such a seat delays settlement to the reveal and gets the
    job contested; it is unpaid, and judged if anyone disputes).

    PROPERTY (new, documented): a provider that did not deliver is never paid; the workers are paid
    in full and the consumer pays exactly their work, within revealEnd + disputeWindow.
    """
    r = sc.a5_copier(market, tmp_path)
    f = r.facts
    assert f["v1_front_run"] == {"copy_commit": 0, "settle": 1}, "the v1 copy still works: " + r.say()
    assert f["copier_paid"] == 0 and r.attacker_net <= 0, "a provider that did no work was paid: " + r.say()
    assert f["workers_paid"] == [HONEST_PAY] * 2 and f["consumer_cost"] == 2 * HONEST_PAY, r.say()
    assert f["outcome"] == OUTCOME_PROVISIONAL and f["closed_after_s"] <= f["bound_s"], r.say()


def test_a5_a_disputed_blind_commitment_costs_the_copier_its_lock(market, tmp_path):
    """A5, disputed: the consumer disputes the contested job; the copier's guess is judged a hard
    fail (its lock burned). The consumer, having won, pays the jury from its reserve.

    PROPERTY (documented residual): when disputed, the copier loses its lock and is unpaid; the
    workers are paid; the consumer pays their work and one jury fee.
    """
    r = sc.a5_copier(market, tmp_path, consumer_disputes=True)
    f = r.facts
    assert f["copier_paid"] == 0 and f["copier_stake_lost"] == LOCK, r.say()
    assert f["workers_paid"] == [HONEST_PAY] * 2 and f["outcome"] == OUTCOME_JUDGED, r.say()
    assert f["consumer_cost"] == 2 * HONEST_PAY + 3 * (FEE // 3), r.say()


def test_a10_one_committed_provider_holds_the_job_hostage(market, tmp_path):
    """A10 — a seat computes the answer but withholds its signed result and commits as soon as v2
    allows. Design decision (documented): the consumer cannot settle with two agreeing results
    (a missing seat before claimEnd, a committed one after); the honest keepers commit, reveal,
    and `mesh settle` finalizes after the reveal window.

    PROPERTY (new, documented): the honest providers are paid in full with nothing ever locked, the
    consumer pays exactly the work done, and the job closes by revealEnd (30 min); the withholder
    gains nothing beyond its own work's pay.
    """
    r = sc.a10_hostage(market, tmp_path)
    f = r.facts
    assert f["settle_at_delivery_end"] == "MissingResult" and f["settle_at_claim_end"] == "AlreadyCommitted", r.say()
    assert f["paid"] == [HONEST_PAY] * 3 and f["outcome"] == OUTCOME_AGREED, r.say()
    assert all(x == [0, 0] for x in f["workers_locked"].values()), "honest stake was locked: " + r.say()
    assert f["consumer_cost"] == 3 * HONEST_PAY and f["closed_after_s"] <= f["bound_s"], r.say()
    assert r.profit <= 0, "withholding paid more than the work: " + r.say()


# ############################################################################# A6 — locks without consent

def test_a6_a_consumer_locks_providers_stake_without_their_consent(market, tmp_path):
    """A6 — stake lock-up without consent (v1: dust jobs locked chosen providers' stake until
    someone finalized). v2: ten dust requests drawn among four 10 MESH providers: a draw locks
    nothing, a seat without a signed result is never locked; the providers' keepers run through
    every window and commit nothing; an honest consumer still hires them.

    PROPERTY: a provider's stake is never locked for a job it did not accept.
    """
    r = sc.a6_locks_without_consent(market, tmp_path)
    f = r.facts
    assert f["locked_after_ten_draws"] == [0] * 4, "a draw locked stake: " + r.say()
    assert f["free_after_windows"] == f["stakes"], "stake stays locked without consent: " + r.say()
    assert f["commits"] == 0 and f["hired"] == 3, r.say()


# ############################################################################# A7, A11 — reputation

@pytest.mark.parametrize("tokens", [0, 1], ids=["a7-zero-tokens", "a7b-paid"])
def test_a7_jobs_among_sybils_launder_them_into_proven_providers(market, tmp_path, tokens):
    """A7 / A7b — reputation laundering: agreed jobs among three sybils (0 tokens: refunded; 1 token:
    the pay is the attacker's own), in a private group it administers and in the open market of a
    model nobody else serves; then the sybils offer the popular model. An honest node indexes the
    chain (ledger.Indexer) and scores (ledger.Reputation), its own jobs among P0..P3 anchoring trust.

    PROPERTY: sybils cannot become proven, nor gain any positive evidence, through jobs among
    themselves; honest providers of the node's own jobs are proven (the control).
    """
    r = sc.a7_laundering(market, tmp_path, tokens)
    f = r.facts
    assert f["outcomes"] == [(OUTCOME_AGREED, 3 * PRICE * tokens)] * 8 and r.attacker_net == 0, r.say()
    assert f["honest_proven"] == [True] * 4, "test harness: the honest history proves nobody: " + r.say()
    assert f["sybils_proven"] == [False] * 3, "sybils became proven: " + r.say()
    assert f["sybil_agreed"] == [0] * 3 and f["sybil_passed"] == [0] * 3, r.say()
    assert all(s <= f["newcomer_score"] for s in f["sybil_score"]), r.say()


def test_a11_reputation_smear_a_delivered_answer_is_recorded_as_missing(market, tmp_path):
    """A11 — targeted smear (v1: the attacker settled at the delivery deadline with the victim left
    out, and every ledger indexed "missing" against it). Now, with the victim's keeper running,
    leaving it out is refused before claimEnd and after its commit: it is settled with its answer.

    PROPERTY: a job in which a provider delivered a signed answer never counts against its
    reputation in an honest node's ledger, and does not lower its score; it is paid.
    """
    r = sc.a11_smear(market, tmp_path)
    f = r.facts
    assert f["before_claim_end"] == "MissingResult", "a delivered answer was left out early: " + r.say()
    assert f["at_claim_end"] == "AlreadyCommitted", "a committed answer was left out: " + r.say()
    assert f["victim_outcome"] == "agreed" and f["victim_unpaid"] == 0, r.say()
    assert f["proven_before"], "test harness: the victim is not proven by the honest node's history: " + r.say()
    assert f["missing_evidence"] == 0 and f["score_after"] >= f["score_before"] and f["proven_after"], r.say()


def test_a11_a_victim_whose_keeper_is_down_is_left_out_but_not_smeared(market, tmp_path):
    """A11, the victim's keeper down for its whole claim window (it breaks the liveness assumption:
    docs/ATTACK_ECONOMICS.md): the attacker may leave it out after claimEnd; the chain shows it
    missing, on the consumer's word alone.

    PROPERTY: the honest node's ledger takes no 'missing' evidence from it and the victim's score
    does not drop. (Documented residual: that answer goes unpaid.)
    """
    r = sc.a11_smear(market, tmp_path, keeper_up=False)
    f = r.facts
    assert f["before_claim_end"] == "MissingResult" and f["at_claim_end"] is None, r.say()
    assert f["victim_outcome"] == "missing", "test harness: " + r.say()
    assert f["missing_evidence"] == 0, "the consumer's word counted against the victim: " + r.say()
    assert f["proven_before"], "test harness: the victim is not proven by the honest node's history: " + r.say()
    assert f["score_after"] >= f["score_before"] and f["proven_after"], r.say()
    assert f["victim_unpaid"] == HONEST_PAY, "the documented liveness residual changed: " + r.say()


# ############################################################################# A8, A9 — the consumer library

def test_a8_a_provably_false_result_is_dropped_instead_of_punished(market, tmp_path):
    """A8 — a provable lie went unpunished in v1 (the consumer library dropped it). Now the whole
    query (Asker over libp2p) keeps the consistently signed overclaim and settles at once with it.

    PROPERTY: a validly signed result with tokenCount > maxTokens is punished (its lock burned), and
    the honest providers are paid without waiting for the delivery window.
    """
    r = sc.a8_provable_lie(market, tmp_path)
    f = r.facts
    assert f["liar_stake_lost"] == LOCK, "a provably false signed result went unpunished: " + r.say()
    assert f["liar_slot"] == [("slashed: signed more tokens than the job allows", LOCK)], r.say()
    assert f["paid_at_once"] == [HONEST_PAY] * 2 and f["settled_before_delivery_end"], r.say()
    assert f["outcome"] == "agreed" and f["text_is_honest"] and f["journal_left"] == 0, r.say()


def test_a9_a_withheld_answer_is_paid_for_but_never_shown_or_saved(market, tmp_path):
    """A9 — a withheld answer: the seat that streams first dies mid-answer and no spare exists; the
    two others deliver the same signed answer. `mesh settle` later pays those two.

    PROPERTY: the consumer's receipt holds the answer it will pay for (and shows it after the
    broken stream), its journal saves it, and it pays exactly those two answers.
    """
    r = sc.a9_withheld_answer(market, tmp_path)
    f = r.facts
    assert f["outcome_at_query"] == "pending", "test harness: " + r.say()
    # `mesh ask` prints the receipt's text after the stream whenever it is not what streamed.
    assert f["receipt_text_is_the_answer"], "the answer paid for is not in the receipt: " + r.say()
    assert f["journal_texts"] == [sc.HONEST.text] and len(f["journal_seats"]) == 2, "not saved: " + r.say()
    assert sorted(f["paid"]) == [0, HONEST_PAY, HONEST_PAY] and f["consumer_cost"] == 2 * HONEST_PAY, r.say()
    assert f["journal_left"] == 0, r.say()


# ############################################################################# A12, A22 — re-rolls

def test_a12_a_consumer_grinds_committees_by_abandoning_requests(market, tmp_path):
    """A12 — the consumer cannot choose a committee but can refuse one. Since the seed includes the
    draw block's prevrandao, it cannot grind before the draw: a re-roll is a drawn request
    abandoned. (Design: documented residual.)

    PROPERTY (new, documented): the seed is not known before the draw's block; the committee kept
    is the pool's draw; a re-roll costs an openJob and a drawSeats and holds the escrow and the
    slot until claimEnd (then the refund is whole); an undrawn request expires only after the
    draw window.
    """
    r = sc.a12_rerolls(market, tmp_path)
    f = r.facts
    assert f["seed_known_before_draw"] is False and f["drawn_is_the_pools_draw"], r.say()
    assert f["slot_busy"] == "SlotBusy" and f["finalize_before_claim_end"] == "TooEarly", r.say()
    assert f["refund"] == f["escrow"] and f["expire_before_window"] == "TooEarly", r.say()
    assert f["open_gas"] + f["draw_gas"] > 100_000, "re-rolls are cheaper than documented: " + r.say()
    assert sorted(f["kept"]) == f["wanted"], r.say()


def test_a22_a_conditional_draw_gets_one_try_per_block_of_the_window(market, tmp_path):
    """A22 — the draw's residual bias: whoever can make a draw conditional on its outcome (a
    builder, a reverting bundle, an EIP-7702 account; emulated by dropping unwanted draws) retries
    once per block, never after the draw window.

    PROPERTY (the stated bound): at most DRAW_WINDOW tries per request.
    """
    r = sc.a22_conditional_draw(market, tmp_path, requests=2)
    f = r.facts
    assert all(1 <= n <= DRAW_WINDOW for n in f["tries"]), r.say()
    assert set(f["after_window"]) <= {"DrawExpired"}, r.say()
    assert f["p_value"] >= 1e-4, "more wanted committees than one try per block gives: " + r.say()


# ############################################################################# A13, A14, A20 — steering a draw

def test_a13_the_consumer_steers_the_seat_draw_after_the_seed_is_known(market, tmp_path):
    """A13 — steering the seat draw: eight parked sybils; for each of twelve requests the attacker
    computes, from the best it can know before its draw's block (the pending block's prevrandao),
    which of them to move into the pool for the victim to sit with two sybils, and moves them in
    the draw's own block, ahead of the draw.

    PROPERTY: the attacker cannot compute the draw before its block, and its moves give it no
    better than the odds of keeping a fixed set of sybils in the pool: the committees it wanted are
    no more than the best fixed arrangement's chance (measured over 400 seeds) makes plausible
    (binomial tail >= 1e-4).
    """
    r = sc.a13_steer_seats(market, tmp_path, trials=12)
    f = r.facts
    assert f["seeds_guessed"] == 0, "the draw was known before its block: " + r.say()
    assert f["p_value"] >= 1e-4, "the moves steered the committee: " + r.say()


def test_a20a_with_pos_lookahead_moves_in_the_draws_block_steer_the_seats(market, tmp_path):
    """A20 (a), found — the same attacker on a chain where the next block's prevrandao is known a
    slot ahead (Ethereum PoS: EIP-4399; emulated by reading the next block on a snapshot). It picks,
    block by block in the draw window, the moves that seat the victim with two sybils, and sends
    them ahead of its draw in that block.

    PROPERTY (PROTOCOL.md: "Nobody chooses who serves a job"): nothing done in the draw's own block,
    when the seed is knowable, changes the committee: the seats are the pool's draw as the pool was
    before that block.
    """
    r = sc.a13_steer_seats(market, tmp_path, trials=4, lookahead=True)
    assert r.facts["seeds_guessed"] == 4, "test harness: the lookahead did not read the seed: " + r.say()
    assert r.facts["moves_changed_committee"] == 0, "moves in the draw's block changed the committee: " + r.say()


def test_a14_jury_capture_by_moving_sybils_into_the_pool_after_the_dispute(market, tmp_path):
    """A14 — jury capture: the attacker disputes its own contested job (its seat sybil lied against
    two honest seats) and, in the block the keepers draw the jury, moves parked sybils into the
    pool ahead of the draw, chosen from the best it can know (the pending block's prevrandao).

    PROPERTY: the attacker cannot compute the jury draw before its block, and its moves capture no
    more juries than keeping a fixed set of sybils in the pool would (the stake share's own odds,
    docs/ATTACK_ECONOMICS.md; bound as in A13).
    """
    r = sc.a14_steer_jury(market, tmp_path, trials=12)
    f = r.facts
    assert f["seeds_guessed"] == 0, "the jury draw was known before its block: " + r.say()
    assert f["p_value"] >= 1e-4, "the moves steered the jury: " + r.say()


def test_a20b_with_pos_lookahead_a_captured_jury_burns_honest_stake(market, tmp_path):
    """A20 (b), found — jury capture with lookahead: the attacker reads the draw block's prevrandao,
    moves the sybils that make the jury theirs in that block, ahead of the keepers' draw; its
    jurors vote the honest seats hard (their keepers post their evidence).

    PROPERTY: nothing done in the jury draw's own block changes the jury, and an honest provider's
    stake is never reduced by a job in which it delivered an honest, validly signed answer.
    """
    r = sc.a14_steer_jury(market, tmp_path, trials=6, lookahead=True, parked_stake=50 * sc.MESH)
    assert r.facts["seeds_guessed"] >= 1, "test harness: the lookahead did not read the seed: " + r.say()
    assert r.facts["moves_changed_jury"] == 0, "moves in the draw's block changed the jury: " + r.say()
    assert r.honest_burned == 0, "a steered jury burned honest stake: " + r.say()


# ############################################################################# A15, A16, A17 — the court

def test_a15_a_cartel_captures_the_jury_of_a_small_pool(market, tmp_path):
    """A15 — a jury of one: in v2 as first written a small private mesh was open to anyone and its
    jury could be a single sybil. Now a mesh admits only whom its admin invited, and a jury is full
    (three) from the mesh or, failing that, from the model's open market. Here the admin did invite
    one attacker provider (a seat); the attacker's second waits in the open market as a juror.

    PROPERTY (MarketParams.jury_size: "one captured juror decides nothing"): the jury is full, an
    honest provider's stake is never reduced, and the lying seat is convicted.
    """
    r = sc.a15_small_mesh_jury(market, tmp_path)
    f = r.facts
    assert f["uninvited_juror"] == "NotInvited", r.say()
    assert f["jury_size"] == 3 and f["jurors_from_open_market"], "the jury was not full: " + r.say()
    assert f["honest_stake_lost"] == [0, 0], "a captured juror burned honest stake: " + r.say()
    assert f["slash_mask"] == 0b111 & ~f["provisional"], "the lying seat was not convicted: " + r.say()


def test_a16_a_sybil_majority_that_withholds_its_evidence_is_slashed(market, tmp_path):
    """A16 — the sybil majority does not post its evidence after the victim disputes; lazy jurors
    vote pass on everything (sent directly: the contract's rule is under test).

    PROPERTY: a seat that withholds its evidence is slashed and unpaid; the honest seat is paid.
    """
    r = sc.a16_withheld_evidence(market, tmp_path)
    f = r.facts
    assert f["slash_mask"] == f["sybil_mask"], "a seat that withheld its evidence was not slashed: " + r.say()
    assert f["victim_paid"] == HONEST_PAY and r.profit < 0, r.say()


def test_a17_griefing_by_a_dispute_the_disputer_loses(market, tmp_path):
    """A17 — griefing by dispute: a seat whose bogus answer lost disputes anyway; every seat must
    publish its tokens and the honest pay waits for the court. The jury hard-fails it.

    PROPERTY: an honest consumer pays nothing for a dispute it did not open that found no honest
    seat wrong, and the losing disputer's bond pays the jury (its loss: its lock and the fee).
    """
    r = sc.a17_grief_by_dispute(market, tmp_path)
    f = r.facts
    assert f["slash_mask"] == f["griefer_mask"], "test harness: " + r.say()
    assert f["consumer_cost"] == 2 * HONEST_PAY, "the consumer paid for a dispute it did not open: " + r.say()
    assert f["bond_refund"] == f["fee"] - 3 * f["jury_share"], "the disputer's bond did not pay the jury: " + r.say()
    assert f["griefer_loss"] == f["lock"] + 3 * f["jury_share"], r.say()


# ############################################################################# A18, A19 — slots, dust

def test_a18_nobody_but_the_consumer_keeps_its_slots_busy_for_long(market, tmp_path):
    """A18 — slot exhaustion: another account fills only its own slots; a seat disputes at the last
    second of the dispute window and draws the jury in the last block of its window.

    PROPERTY: nobody else can keep a consumer from opening jobs: its slots are never taken, and a
    slot held by a contested job is free again by its own `mesh settle` within disputeWindow +
    DRAW_WINDOW blocks + 3 court phases of the contest.
    """
    r = sc.a18_slot_exhaustion(market, tmp_path)
    f = r.facts
    assert f["victim_free_slot"] == 0, "another account took the consumer's slots: " + r.say()
    assert f["jury_drawn_blocks_after_dispute"] == DRAW_WINDOW, "test harness: " + r.say()
    assert f["held_s"] <= f["bound_s"] and f["slot_reused"], "a seat held the slot beyond the bound: " + r.say()


def test_a19_a_dust_dispute_makes_the_jury_work_for_nothing(market, tmp_path):
    """A19 — dust disputes: a jury fee below minJuryFee (here 10) cannot be disputed by anyone, so
    the minority seat's keeper does not try and resolves on the provisional outcome; at the floor
    (300) each juror earns 100.

    PROPERTY: jurors are paid for every dispute they judge (each revealing juror earns > 0), and
    opening a dispute is never free.
    """
    r = sc.a19_dust_dispute(market, tmp_path)
    f = r.facts
    assert f["fee_small"] < P.min_jury_fee <= f["fee"], "test harness: " + r.say()
    assert f["consumer_dispute"] == f["seat_dispute"] == "DisputeTooSmall", "a dust job was disputed: " + r.say()
    assert f["small_disputed"] is None and f["small_outcome"] == OUTCOME_PROVISIONAL, r.say()
    assert len(f["juror_earnings"]) == 3 and all(e >= P.min_jury_fee // 3 for e in f["juror_earnings"]), \
        "jurors judged a dispute for nothing: " + r.say()


# ############################################################################# A21 — a pool too small for a jury

def test_a21_a_cartel_of_two_in_a_pool_too_small_for_a_jury_is_paid_for_a_bogus_answer(market, tmp_path):
    """A21, found — a model served by three providers, two of them a cartel: every job would seat
    the three, the cartel would sign a bogus answer and be the provisional majority, and no jury
    could be drawn to judge it (the dispute is void).

    PROPERTY (issue 9: "a cartel of two must lose"): an honest consumer never gives such a pool a
    job (it refuses, before any transaction, a pool that cannot seat a jury besides the seats), so
    the cartel gains nothing. The careless variant shows why the rule exists (PROTOCOL.md states it
    for every consumer): a consumer that ignores it pays the cartel.
    """
    r = sc.a21_void_jury_cartel(market, tmp_path)
    assert "able to sit on a jury" in r.facts["refused"] and r.profit == 0 and r.victim_loss == 0, r.say()
    careless = sc.a21_void_jury_cartel(market, tmp_path / "careless", consumer_checks=False)
    assert careless.facts["void"] and careless.profit > 0, "the careless variant no longer shows the hole: " + careless.say()


# ############################################################################# found by the crash test

def test_a_lone_seats_keeper_draws_the_jury_with_its_dispute(market, tmp_path):
    """Found by tests/test_crash.py: a seat left alone with its result (the others never answered)
    is contested and not paid provisionally, so its keeper disputes. The keeper drew the jury only
    on its next pass; a keeper holding many claims mines a block for each of them in a pass, and a
    jury must be drawn within DRAW_WINDOW (8) blocks of the dispute: the dispute went void and the
    honest result unpaid.

    PROPERTY: the pass that disputes also draws the jury; the lone honest seat is judged and paid.
    """
    m = market
    honest = sc.Honest(m, tmp_path, [*m.providers, *sc.honest_providers(m, "lone", 3)])
    job = sc.open_job(m)
    lone = honest.seat(job.seats[0])
    claim = lone.serve(job, sc.HONEST)
    sc.mine_at(m, sc.claim_end(job))  # the other seats never answered nor committed: left out
    contest = m.mc.contest_of(m.mc.settle(m.consumer, job, [claim, None, None]))
    assert contest is not None and contest.present == 1 and contest.provisional == 0
    lone.claims.tick()  # one pass of its keeper
    st = sc.job_state(m.chain, job.job_id)
    assert st.disputer == lone.acct.address, honest.log
    assert len(st.jurors) == 3 and not st.void, f"the dispute's jury was left to a later pass: {honest.log}"
    st = sc.drive(m, job.job_id, honest)
    assert st.settled["outcome"] == OUTCOME_JUDGED and int(st.settled["paid"][0]) == HONEST_PAY, honest.log


# ############################################################################# F1-F9 — issue 17 (protocol v3)

def v3(finding: str, why: str):
    """The finding's test fails on the v2 contracts; protocol v3 fixes it (strict: a pass is news)."""
    return pytest.mark.xfail(strict=True, reason=f"{finding}: {why} (protocol v3, issue 17)")


@v3("F1", "a lone honest result goes to a jury drawn from the pool minus the seats")
def test_f1_a_lone_honest_result_is_paid_and_cannot_be_jury_captured(market, tmp_path):
    """F1 — lone-result jury capture (critical). The pool: four honest providers (1,000 MESH each)
    and the attacker's three sybils of 50 MESH (3.6% of the stake; seven providers, so an honest
    consumer's --min-pool 6 accepts it). The consumer re-rolls until three honest seats are drawn
    (the jury's pool is then one honest provider and the three sybils), asks seat V alone and
    settles with V's result alone: contested, nobody provisional; V's keeper disputes (bond F =
    1,280) and draws the jury; the sybil jurors vote V hard. v2: V's lock L = 1,000,000 burns, its
    bond pays the jury (1,278), V is unpaid; the sybils earn 852 and the consumer has a free answer.

    PROPERTY (v3 §6 F1): a seat that delivered an honest answer is paid for it without a jury the
    consumer can stack, its stake is never reduced, and the attack gains the attacker nothing.
    """
    r = sc.f1_lone_result_capture(market, tmp_path)
    f = r.facts
    assert f["pool_rule"] is None and f["stake_share"] < 0.04, "test harness: " + r.say()
    assert f["victim_stake_lost"] == 0 and f["victim_paid"] == HONEST_PAY, \
        "the honest seat V's lock was burned and its answer unpaid: " + r.say()
    assert r.profit <= 0, "the lone-result attack paid: " + r.say()


@v3("F2", "a member leaving after the draw voids the dispute")
def test_f2_an_exit_after_the_draw_neither_voids_the_dispute_nor_pays_the_cartel(market, tmp_path):
    """F2 — exit after the draw (high). A six-provider open market, three of them a cartel (100
    MESH each; --min-pool 6 passes). When an honest consumer's job seats two of the cartel (chance
    9/20), the third deregisters at once (free); the two sign a bogus 128-token answer and are the
    provisional majority; the honest seat disputes; the jury's pool (the pool minus the seats) holds
    two providers: v2 voids the dispute, pays the cartel 2 x 1,280 and the honest seat nothing; the
    member registers again.

    PROPERTY (v3 §6 F2): leaving the pool takes effect only after every court the provider could sit
    on: the dispute is judged (never void), the cartel is not paid, the honest seat is.
    """
    r = sc.f2_exit_after_the_draw(market, tmp_path)
    f = r.facts
    assert f["pool_rule"] is None and f["disputer"] is not None and f["leaver_listed_again"], "test harness: " + r.say()
    assert not f["void"], "the cartel member's exit after the draw voided the dispute: " + r.say()
    assert f["cartel_paid"] == [0, 0] and f["honest_paid"] == HONEST_PAY, "the bogus majority was paid: " + r.say()
    assert r.attacker_net < 0, "the exit paid the cartel: " + r.say()


@v3("F3", "jurors are paid whatever they vote and absence counts as pass")
def test_f3_absent_or_lazy_jurors_lose_their_juror_stake_and_never_count_as_pass(market, tmp_path):
    """F3 — jurors paid for showing up (high). A mesh of an honest admin and two cartel providers it
    invited, its juries from the open market P1..P3 (--min-pool 6 passes). The cartel signs a bogus
    answer, the admin disputes, the jury is P1..P3: P1 scores (the cartel hard); P2 and P3 either vote
    pass on everything without scoring (lazy, or bribed with any epsilon) or stay away. v2: each
    revealed juror earns 426 whatever it voted, absent ones lose nothing, and a slash needs two
    revealed hard votes: the cartel is paid 2 x 1,280 both times.

    PROPERTY (v3 §6 F3): a juror's stake is at risk; lazy (incoherent) and absent jurors lose their
    juror stake, coherent ones are paid; absence never counts as pass: the cartel is slashed.
    """
    with sc.reverted(market):
        lazy = sc.f3_lazy_or_absent_jurors(market, tmp_path / "lazy")
    absent = sc.f3_lazy_or_absent_jurors(market, tmp_path / "absent", absent=True)
    for r in (lazy, absent):
        assert r.facts["pool_rule"] is None and r.facts["jury_is_p1_p3"], "test harness: " + r.say()
    assert all(x < 0 for x in lazy.facts["lazy_juror_net"]) and lazy.facts["honest_juror_net"] > 0, \
        "lazy jurors were paid like the one that scored: " + lazy.say()
    assert all(x > 0 for x in absent.facts["absent_juror_stake_lost"]), "absent jurors lost nothing: " + absent.say()
    for r in (lazy, absent):
        assert r.facts["slash_mask"] == r.facts["cartel_mask"], "lazy or absent jurors cleared the cartel: " + r.say()


@v3("F4", "zero-stake members use up the 64 draw attempts and a short jury voids the dispute")
def test_f4_zero_stake_members_are_never_drawn_and_never_void_a_draw(market, tmp_path):
    """F4 — zero-stake dilution (medium-high). Eight honest providers and a cartel of two: a mesh of
    an honest admin and the cartel, its juries from an open market of seven honest providers
    (--min-pool 6 passes, before and after). The cartel's bogus answer is contested; then 300
    zero-stake sybils register in the open market (no stake needed; the pool rule does not count
    them). Eight trials at other heights: the admin's keeper disputes and draws the jury; eight new
    jobs try their seat draw. v2: 64 attempts over 307 members, 300 of weight 0: most juries come up
    short and the dispute is void at once (the bogus majority paid); most seat draws fail their block.

    PROPERTY (v3 §6 F4): a member below the minimum stake is never drawn and costs a draw nothing:
    no jury is void, every seat draw succeeds in its block.
    """
    r = sc.f4_zero_stake_dilution(market, tmp_path)
    f = r.facts
    assert f["pool_rule_before"] is None and f["pool_rule_after"] is None, "test harness: " + r.say()
    assert f["contest_provisional"] == f["cartel_mask"] and f["pool_size"] == 307, "test harness: " + r.say()
    assert f["void_juries"] == 0, "zero-stake sybils voided disputes: " + r.say()
    assert f["seat_draws_in_one_block"] == f["trials"], "zero-stake sybils made seat draws fail: " + r.say()


@v3("F5", "a conditional draw among many requests chooses the jury's pool")
def test_f5_conditional_committees_buy_no_court_advantage(market, tmp_path):
    """F5 — conditional draws across jobs (medium). F1's pool (four honest, three sybils of 50
    MESH). The consumer opens 16 requests in one block (no escrow until drawn) and draws only one
    whose committee is three honest providers (a bundle or an EIP-7702 account reverts the others;
    emulated as A22); that committee leaves the jury's pool to the sybils. Then F1's lone result on
    it. v2: a wanted committee comes in the first block of the window (each request has chance
    ~0.28); its jury-capture odds are ~1 against ~0.5 for a committee the pool draws; V is burned.

    PROPERTY (v3 §6 F5): the committee decides nothing about the court: a consumer's chosen
    committee wins it no case more often than the pool's own draw does (c(s)).
    """
    r = sc.f5_conditional_committees(market, tmp_path)
    f = r.facts
    assert f["escrow_undrawn"] == 0 and f["pool_rule"] is None, "test harness: " + r.say()
    assert f["capture_odds_kept"] <= f["capture_odds_natural"] + 0.05, \
        "a conditionally drawn committee raised the jury's capture odds: " + r.say()
    assert f["victim_stake_lost"] == 0 and f["victim_paid"] == HONEST_PAY, "the honest seat was burned: " + r.say()


@v3("F6", "an agreed answer cannot be disputed or audited")
def test_f6_three_agreeing_cartel_seats_can_be_contested_and_audited(market, tmp_path):
    """F6 — full capture (medium). A cartel holds all three seats (chance ~s^3 in an open market;
    certain here: its own mesh of three, juries from the open market P0..P3, --min-pool 6 passes)
    and signs one bogus answer. v2: agreed, paid 3 x 1,280 at once; `dispute` takes only contested
    jobs (JobNotOpen); nothing audits an agreed answer.

    PROPERTY (v3 §6 F6): the consumer can contest an agreed answer before a jury drawn outside the
    seats (and audits check agreed answers): the cartel is slashed and unpaid.
    """
    r = sc.f6_full_capture(market, tmp_path)
    f = r.facts
    assert f["pool_rule"] is None, "test harness: " + r.say()
    assert f["contest_refused"] is None, "three agreeing cartel seats could not be contested: " + r.say()
    assert f["cartel_paid"] == [0, 0, 0] and f["slash_mask"] == 0b111, "the full capture paid: " + r.say()


@v3("F7", "the contract seats a job in a pool that cannot judge")
def test_f7_the_contract_refuses_a_pool_that_cannot_judge(market, tmp_path):
    """F7 — no pool check in the contract (medium). A model served by three providers: the consumer
    library refuses the pool (--min-pool 6), a consumer that skips the rule is served anyway. v2: the
    draw seats the three; F1's lone result (V alone, settled alone) is disputed, the jury is void,
    nobody is paid: the answer is free, V unpaid.

    PROPERTY (v3 §6 F7, §2.4): the contract refuses to seat a job in a pool that cannot judge it
    (PoolTooSmall); no honest seat works for nothing.
    """
    r = sc.f7_pool_that_cannot_judge(market, tmp_path)
    f = r.facts
    assert f["pool_rule"] is not None and f["pool_size"] == 3, "test harness: " + r.say()
    assert f["draw_refused"] == "PoolTooSmall", "the contract seated a job in a pool that cannot judge: " + r.say()
    assert r.victim_loss == 0 and r.profit <= 0, r.say()


@v3("F8", "a seat forced onto the commit path is slashed for a missed reveal window")
def test_f8_a_seat_forced_onto_the_chain_is_never_slashed_and_is_compensated(market, tmp_path):
    """F8 — a seat forced onto the chain (low). Six honest providers (--min-pool 6 passes). The
    consumer holds all three answers and never settles: every seat must commit on-chain; one seat's
    keeper is down for the 600 s reveal window. v2: the others reveal and finalize; the unrevealed
    commitment is slashed (L = 1,000,000 burned); nobody is paid for the transactions the consumer
    forced (commit + reveal gas each).

    PROPERTY (v3 §6 F8): a seat is never slashed for a window the consumer forced on it, and a seat
    forced to claim is compensated (kappa) beyond its pay.
    """
    r = sc.f8_forced_onto_the_chain(market, tmp_path)
    f = r.facts
    assert f["pool_rule"] is None and f["committed"] == [0, 1, 2], "test harness: " + r.say()
    assert f["stake_lost"] == [0, 0, 0], "a seat the consumer forced onto the chain was slashed: " + r.say()
    assert all(c > 0 for c in f["compensation"]), "seats forced onto the chain were not compensated: " + r.say()


@v3("F9", "24-bit block tags wrap after 2^24 blocks")
def test_f9_block_tags_do_not_wrap(market, tmp_path):
    """F9 — 24-bit block tags (low). Seven honest providers; P0 leaves the pool and puts its stake to
    thaw. Anvil cannot reach 2^24 more blocks (about 50 a second here), so the state the registry
    holds 2^24 blocks after the leave is written directly: the leave's 24-bit tag (the only field
    that depends on its block) set to what a change 2^24 blocks before the draw leaves; then 20
    jobs are drawn, each in its block. v2: the draw reads the slot as "changed in this block" and
    takes its entry from before the leave: P0 (gone, stake 0) is seated in about half of them.

    PROPERTY (v3 §6 F9): block tags do not wrap within the market's life: a provider who left is
    never drawn.
    """
    r = sc.f9_block_tags_wrap(market, tmp_path)
    f = r.facts
    assert not f["leaver_listed"] and f["leaver_stake"] == 0, "test harness: " + r.say()
    assert f["departed_seated"] == 0, "a provider who left 2^24 blocks ago was seated: " + r.say()
