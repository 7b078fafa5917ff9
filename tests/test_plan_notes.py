"""Notes a plan carries about its inputs (planner.plan_notes), worked out by hand."""

from __future__ import annotations

import planner
from planner.plan_notes import prefill_step_note


def test_prefill_step_note_names_both_step_sizes():
    # 16 prompts of 4096 tokens = 65,536 tokens a step against replayed steps of 4,096: noted
    note, = prefill_step_note("prefill", 16, 4096, 4096.0, 100_000)
    assert "16 prompts of 4096 tokens (65536 tokens a step)" in note and "steps of 4096 tokens" in note
    assert "--tokens-per-step 65536" in note
    short, = prefill_step_note("prefill", 16, 4096, 4096.0, 8192)  # the trace cannot make such a step
    assert "the trace's 8192 tokens make no step of that size" in short
    assert prefill_step_note("prefill", 2, 4096, 8192.0, 100_000) == []  # the same size: nothing to say
    assert prefill_step_note("prefill", 2, 4096, 7500.0, 100_000) == []  # within 10%
    assert prefill_step_note("prefill", 2, 4096, 7000.0, 100_000) != []  # 17% apart
    assert prefill_step_note("decode", 16, 4096, 4096.0, 100_000) == []  # decode steps are the batch in both


def test_a_prefill_plan_notes_when_the_replay_steps_differ():
    # the default: one 4096-token prompt per GPU (8), replayed as the shipped trace's 8192-token steps
    p = planner.plan(mode="prefill", time_limit=20)
    assert any(n.startswith("the whole-step figures are for 8 prompts of 4096 tokens") for n in p.predicted.notes)
    same = planner.plan(mode="prefill", prompt_len=1024, time_limit=20)  # 8 × 1024 = the replay's 8192
    assert not any(n.startswith("the whole-step figures") for n in same.predicted.notes)
