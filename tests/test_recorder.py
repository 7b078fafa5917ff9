"""RoutingRecorder: hooks on hand-built MoE models whose routing is known, one fake module per
Hugging Face router shape, saved traces read back by load_trace, counts and rebalance."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import planner  # noqa: E402
from planner.errors import InputError  # noqa: E402
from planner.recorder import RoutingRecorder, deepseek_topk  # noqa: E402

E = 4  # experts
D = 4  # hidden = one-hot token classes


class ZeroExpert(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def known_gate(shift: int) -> nn.Linear:
    """A gate whose logits for one-hot class c are 10 at expert (c + shift) % E, 5 at
    (c + shift + 1) % E and 0 elsewhere: top-2 = [(c + shift) % E, (c + shift + 1) % E]."""
    g = nn.Linear(D, E, bias=False)
    w = torch.zeros(E, D)
    for c in range(D):
        w[(c + shift) % E, c] = 10.0
        w[(c + shift + 1) % E, c] = 5.0
    g.weight.data.copy_(w)
    return g


class KnownBlock(nn.Module):
    """Mixtral-shaped block (gate Linear, experts, top_k) whose experts output zeros: the
    residual stream stays the one-hot input, so every layer's routing is known."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.top_k = 2
        self.gate = known_gate(shift)
        self.experts = nn.ModuleList(ZeroExpert() for _ in range(E))

    def forward(self, x):
        logits = self.gate(x.reshape(-1, D))
        _, ids = torch.topk(logits.softmax(-1), self.top_k)
        return torch.zeros_like(x)


class KnownModel(nn.Module):
    def __init__(self, shifts=(0, 2)) -> None:
        super().__init__()
        self.layers = nn.ModuleList(KnownBlock(s) for s in shifts)

    def forward(self, tokens):
        h = nn.functional.one_hot(tokens, D).float()
        for b in self.layers:
            h = h + b(h)
        return h


def test_known_routing_ids_counts_and_steps(tmp_path):
    model = KnownModel()
    rec = RoutingRecorder(model)
    assert [h.name for h in rec.hooks] == ["layers.0.gate", "layers.1.gate"]
    model(torch.tensor([[0, 0, 1, 3]]))  # step 0
    model(torch.tensor([[2, 2], [1, 0]]))  # step 1
    t = rec.trace()
    # layer 0: class c -> [c, c+1]; layer 1 (shift 2): class c -> [c+2, c+3] (mod 4)
    assert t.topk_ids[0].tolist() == [[0, 1], [0, 1], [1, 2], [3, 0], [2, 3], [2, 3], [1, 2], [0, 1]]
    assert t.topk_ids[1].tolist() == [[2, 3], [2, 3], [3, 0], [1, 2], [0, 1], [0, 1], [3, 0], [2, 3]]
    assert t.step.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert t.num_experts == 4
    # counts by hand from the ids above (16 choices per layer)
    assert rec.counts().tolist() == [[4, 5, 4, 3], [4, 3, 4, 5]]
    assert rec.counts(last=1).tolist() == [[1, 2, 3, 2], [3, 2, 1, 2]]
    assert rec.counts_per_step().shape == (2, 2, 4)
    path = rec.save(tmp_path / "rec.npz")
    back = planner.load_trace(path)
    assert np.array_equal(back.topk_ids, t.topk_ids) and np.array_equal(back.step, t.step)
    assert back.num_experts == 4
    rec.detach()
    model(torch.tensor([[1]]))
    assert rec.num_steps == 2  # detached: nothing more recorded


def test_weights_are_recorded_and_renormalised_for_mixtral():
    class MixtralSparseMoeBlock(KnownBlock):
        pass

    class M(KnownModel):
        def __init__(self):
            nn.Module.__init__(self)
            self.layers = nn.ModuleList([MixtralSparseMoeBlock(0)])

    model = M()
    rec = RoutingRecorder(model, record_weights=True)
    model(torch.tensor([[0, 3]]))
    t = rec.trace()
    # softmax over logits (10, 5, 0, 0) restricted to the top-2 and renormalised: e^10/(e^10+e^5)
    w0 = np.exp(10) / (np.exp(10) + np.exp(5))
    assert np.allclose(t.topk_weights[0], [[w0, 1 - w0], [w0, 1 - w0]], atol=1e-3)


def _qwen3_like(norm: bool, cls_name: str = "Qwen3MoeSparseMoeBlock"):
    """A block of the Qwen2/3-MoE or OLMoE shape: gate Linear, top_k, norm_topk_prob."""
    cls = type(cls_name, (KnownBlock,), {})
    b = cls(0)
    b.norm_topk_prob = norm
    model = nn.Module()
    model.layers = nn.ModuleList([b])
    model.forward = lambda tokens: b(nn.functional.one_hot(tokens, D).float())
    return model


@pytest.mark.parametrize("cls_name", ["Qwen2MoeSparseMoeBlock", "Qwen3MoeSparseMoeBlock", "OlmoeSparseMoeBlock"])
def test_qwen_and_olmoe_follow_norm_topk_prob(cls_name):
    soft = np.exp([10.0, 5.0]) / (np.exp(10) + np.exp(5) + 2)
    for norm, want in ((False, soft), (True, soft / soft.sum())):
        model = _qwen3_like(norm, cls_name)
        rec = RoutingRecorder(model, record_weights=True, auto_step=False)
        model(torch.tensor([[1]]))
        rec.step()
        t = rec.trace()
        assert t.topk_ids[0].tolist() == [[1, 2]]
        assert np.allclose(t.topk_weights[0, 0], want, atol=1e-3), (norm, t.topk_weights)


class MoEGate(nn.Module):
    """DeepSeek-V2/V3 remote-code gate: returns (topk_idx, topk_weight, aux_loss)."""

    def __init__(self, ids):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(8, D))
        self.top_k = 2
        self.ids = ids

    def forward(self, x):
        T = x.reshape(-1, D).shape[0]
        idx = self.ids[:T]
        return idx, torch.full(idx.shape, 0.5), None


class DeepseekV3MoE(nn.Module):
    def __init__(self, gate):
        super().__init__()
        self.gate = gate
        self.experts = nn.ModuleList(ZeroExpert() for _ in range(8))
        self.num_experts_per_tok = 2

    def forward(self, x):
        self.gate(x)
        return torch.zeros_like(x)


def _wrap(*blocks):
    model = nn.Module()
    model.layers = nn.ModuleList(blocks)

    def fwd(x):
        for b in model.layers:
            x = x + b(x)
        return x

    model.forward = fwd
    return model


def test_deepseek_moegate_ids_are_taken_as_returned(tmp_path):
    ids = torch.tensor([[7, 1], [0, 6], [3, 4]])
    model = _wrap(DeepseekV3MoE(MoEGate(ids)))
    rec = RoutingRecorder(model, record_weights=True, auto_step=False)
    model(torch.randn(1, 3, D))
    rec.step()
    t = rec.trace()
    assert t.num_experts == 8 and t.topk_ids[0].tolist() == ids.tolist()
    assert np.allclose(t.topk_weights, 0.5)


def numpy_group_limited(logits, bias, k, n_group, topk_group, norm):
    """DeepSeek-V3 routing written out in numpy (reference for deepseek_topk)."""
    scores = 1 / (1 + np.exp(-logits))
    choice = scores + bias
    T, En = choice.shape
    per = En // n_group
    out_ids, out_w = [], []
    for t in range(T):
        g = choice[t].reshape(n_group, per)
        gscore = np.sort(g, axis=1)[:, -2:].sum(axis=1)
        keep = np.argsort(-gscore, kind="stable")[:topk_group]
        masked = np.full(En, -np.inf)
        for gi in keep:
            masked[gi * per:(gi + 1) * per] = choice[t, gi * per:(gi + 1) * per]
        ids = np.argsort(-masked, kind="stable")[:k]
        w = scores[t, ids]
        out_ids.append(ids)
        out_w.append(w / w.sum() if norm else w)
    return np.array(out_ids), np.array(out_w)


class DeepseekV3TopkRouter(nn.Module):
    """transformers' newer DeepSeek-V3 router: returns logits only; routing in the block."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, D, generator=torch.Generator().manual_seed(1)))
        self.register_buffer("e_score_correction_bias", torch.linspace(-0.2, 0.2, 16))
        self.n_group, self.topk_group, self.top_k, self.norm_topk_prob = 4, 2, 3, True

    def forward(self, x):
        return nn.functional.linear(x.reshape(-1, D).float(), self.weight)


def test_deepseek_v3_logits_router_uses_group_limited_routing():
    gate = DeepseekV3TopkRouter()
    block = DeepseekV3MoE(gate)
    block.num_experts_per_tok = 3
    model = _wrap(block)
    rec = RoutingRecorder(model, record_weights=True, auto_step=False)
    x = torch.randn(1, 32, D, generator=torch.Generator().manual_seed(2))
    model(x)
    rec.step()
    t = rec.trace()
    logits = nn.functional.linear(x.reshape(-1, D), gate.weight).detach().numpy()
    ids, w = numpy_group_limited(logits, gate.e_score_correction_bias.numpy(), 3, 4, 2, True)
    assert np.array_equal(np.sort(t.topk_ids[0], axis=1), np.sort(ids, axis=1))
    # every token's experts lie in at most topk_group = 2 groups of 4
    assert all(len(set((row // 4).tolist())) <= 2 for row in t.topk_ids[0])
    order = np.argsort(t.topk_ids[0], axis=1)
    assert np.allclose(np.take_along_axis(t.topk_weights[0].astype(np.float32), order, 1),
                       np.take_along_axis(w, np.argsort(ids, axis=1), 1), atol=2e-3)


def test_deepseek_topk_without_groups_is_plain_sigmoid_topk():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    ids, w = deepseek_topk(logits, 2, None, None, None, False)
    assert ids.tolist() == [[1, 3]]
    assert torch.allclose(w, torch.sigmoid(torch.tensor([[3.0, 2.0]])))


class Qwen3MoeTopKRouter(nn.Module):
    """transformers v5 router: returns (router_logits, router_scores, router_indices)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(known_gate(1).weight.data.clone())
        self.top_k, self.num_experts = 2, E

    def forward(self, x):
        logits = nn.functional.linear(x.reshape(-1, D), self.weight)
        v, i = torch.topk(logits.softmax(-1), self.top_k)
        return logits, v, i


class Qwen3MoeSparseMoeBlockV5(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = Qwen3MoeTopKRouter()
        self.experts = nn.Module()

    def forward(self, x):
        self.gate(x)
        return torch.zeros_like(x)


def test_v5_topk_router_tuple_output():
    model = _wrap(Qwen3MoeSparseMoeBlockV5())
    rec = RoutingRecorder(model, auto_step=False)
    model(nn.functional.one_hot(torch.tensor([[0, 3]]), D).float())
    rec.step()
    assert rec.trace().topk_ids[0].tolist() == [[1, 2], [0, 1]]  # shift 1: c -> [c+1, c+2]


class IdsRouter(nn.Module):
    """A custom router returning top-k ids (and nothing else)."""

    def forward(self, x):
        T = x.reshape(-1, D).shape[0]
        return torch.stack([torch.arange(T) % 5, (torch.arange(T) + 1) % 5], dim=1)


def test_generic_hook_by_module_name():
    model = nn.Module()
    model.router = IdsRouter()
    model.forward = lambda x: model.router(x)
    rec = RoutingRecorder(model, routers=["router"], num_experts=5, auto_step=False)
    model(torch.zeros(6, D))
    rec.step()
    t = rec.trace()
    assert t.num_experts == 5 and t.topk_ids[0, :, 0].tolist() == [0, 1, 2, 3, 4, 0]
    with pytest.raises(InputError, match="no module named 'nope'"):
        RoutingRecorder(model, routers=["nope"])


def test_generic_logits_router_needs_top_k():
    model = nn.Module()
    model.router = nn.Linear(D, E, bias=False)
    model.forward = lambda x: model.router(x)
    with pytest.raises(InputError, match="router router is a Linear .* pass top_k"):  # when made, not at a forward
        RoutingRecorder(model, routers=[model.router], auto_step=False)
    rec = RoutingRecorder(model, routers=[model.router], top_k=1, auto_step=False)
    model(torch.eye(D)[:2])
    rec.step()
    assert rec.trace().num_experts == E


def test_no_router_found_is_an_input_error():
    with pytest.raises(InputError, match="found no router"):
        RoutingRecorder(nn.Linear(2, 2))


def test_layers_that_see_different_tokens_are_refused():
    model = KnownModel()
    rec = RoutingRecorder(model, auto_step=False)
    model.layers[0].gate(torch.eye(D)[:3])
    model.layers[1].gate(torch.eye(D)[:2])
    with pytest.raises(InputError, match="same tokens"):
        rec.step()


def test_rebalance_every_n_steps_calls_back_with_the_window_counts():
    model = KnownModel()
    calls = []
    rec = RoutingRecorder(model, rebalance_every=2, num_gpus=2, num_redundant=2,
                          on_rebalance=lambda p, c, s: calls.append((p.copy(), c.copy(), s)))
    batches = [[[0, 0, 0, 1]], [[0, 0, 2, 3]], [[3, 3, 3, 3]], [[2, 2, 3, 1]], [[1]]]
    for b in batches:
        model(torch.tensor(b))
    assert [c[2] for c in calls] == [2, 4] and rec.rebalances == [2, 4]
    p1, c1, _ = calls[0]
    assert c1.tolist() == rec.counts_per_step()[:2].sum(0).tolist()
    assert p1.shape == (2, E + 2)
    assert np.array_equal(p1, planner.rebalance(c1, 2, 1, 2))
    p2, c2, _ = calls[1]
    assert c2.tolist() == rec.counts_per_step()[2:4].sum(0).tolist()
    assert np.array_equal(p2, planner.rebalance(c2, 2, 1, 2, previous=p1))
    assert np.array_equal(rec.placement, p2)
    for layer in p2:  # every expert keeps a slot
        assert set(layer.tolist()) == set(range(E))


def test_rebalance_needs_num_gpus():
    with pytest.raises(InputError, match="num_gpus"):
        RoutingRecorder(KnownModel(), rebalance_every=2)


def test_counts_only_recording_saves_a_counts_trace(tmp_path):
    model = KnownModel()
    rec = RoutingRecorder(model, keep_ids=False, sync_every=1)
    model(torch.tensor([[0, 0, 1, 3]]))
    model(torch.tensor([[2, 2, 1, 0]]))
    rec.save(tmp_path / "c.npz")
    back = planner.load_trace(tmp_path / "c.npz")
    assert not back.has_tokens
    assert back.counts_per_step()[1].tolist() == [[1, 2, 3, 2], [3, 2, 1, 2]]


def test_source_rank_and_model_name_are_written(tmp_path):
    model = KnownModel()
    rec = RoutingRecorder(model, source_rank=3, model_name="known")
    model(torch.tensor([[0, 1]]))
    back = planner.load_trace(rec.save(tmp_path / "r.npz"))
    assert back.source_rank.tolist() == [3, 3] and back.model == "known"


def test_trace_of_an_empty_recording_is_an_input_error():
    rec = RoutingRecorder(KnownModel())
    with pytest.raises(InputError, match="nothing recorded"):
        rec.trace()


def test_pause_and_resume():
    model = KnownModel()
    rec = RoutingRecorder(model)
    rec.pause()
    model(torch.tensor([[0]]))
    assert rec.num_steps == 0
    rec.resume()
    model(torch.tensor([[0]]))
    assert rec.num_steps == 1


def test_import_planner_does_not_import_torch():
    code = "import sys, planner; planner.RoutingRecorder; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_sequences_from_batch_shapes_and_generate_continuation(tmp_path):
    model = KnownModel()
    rec = RoutingRecorder(model)
    model(torch.tensor([[0, 0, 1], [3, 2, 1]]))  # step 0: prompts of 2 new sequences, 3 tokens each
    model(torch.tensor([[2], [0]]))  # step 1: one more token of each (generate's decode step)
    model(torch.tensor([[1, 1]]))  # step 2: a new prompt of 2 tokens
    back = planner.load_trace(rec.save(tmp_path / "s.npz"))
    assert back.seq_id.tolist() == [0, 0, 0, 1, 1, 1, 0, 1, 2, 2]
    assert back.pos.tolist() == [0, 1, 2, 0, 1, 2, 3, 3, 0, 1]


def test_explicit_sequence_marks_and_their_check():
    model = KnownModel()
    rec = RoutingRecorder(model, record_sequences=False)
    rec.mark_sequences([7, 7, 9], [4, 5, 0])
    model(torch.tensor([[0, 1, 2]]))
    t = rec.trace()
    assert t.seq_id.tolist() == [7, 7, 9] and t.pos.tolist() == [4, 5, 0]
    rec.mark_sequences([1])
    with pytest.raises(InputError, match="sequence marks of step 1 cover 1 tokens but its routers saw 2"):
        model(torch.tensor([[0, 1]]))


def test_steps_without_marks_leave_sequences_out():
    model = KnownModel()
    rec = RoutingRecorder(model, record_sequences=False)
    rec.mark_sequences([0, 0])
    model(torch.tensor([[0, 1]]))
    model(torch.tensor([[2, 3]]))  # no marks
    assert rec.trace().seq_id is None


# ---- hook points of transformers' own shapes (issue 18) ------------------------------------


class RoutedExperts(nn.Module):
    """transformers 5's experts module: called with the routing (hidden, ids, weights)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, hidden_states, top_k_index, top_k_weights):
        self.seen.append((top_k_index.detach().clone(), top_k_weights.detach().clone()))
        return torch.zeros_like(hidden_states)


class GatelessDeepseekV2Moe(nn.Module):
    """DeepSeek-V2's block on transformers 5.0-5.10: it routes with F.linear(x, self.gate.weight)
    and never calls its gate (a forward hook on the gate never fires)."""

    def __init__(self):
        super().__init__()
        self.gate = known_gate(1)
        self.experts = RoutedExperts()
        self.top_k, self.routed_scaling_factor = 2, 1.5

    def forward(self, x):
        x = x.reshape(-1, D)
        scores = nn.functional.linear(x, self.gate.weight).softmax(-1)
        w, ids = torch.topk(scores, self.top_k, dim=-1)
        return self.experts(x, ids, w * self.routed_scaling_factor)


def test_a_block_that_never_calls_its_gate_is_read_at_its_experts():
    block = GatelessDeepseekV2Moe()
    model = _wrap(block)
    rec = RoutingRecorder(model, record_weights=True)
    assert [h.name for h in rec.hooks] == ["layers.0.experts"]
    model(nn.functional.one_hot(torch.tensor([[0, 3, 2]]), D).float())
    t = rec.trace()
    ids, w = block.experts.seen[0]
    assert t.topk_ids[0].tolist() == ids.tolist() == [[1, 2], [0, 1], [3, 0]]
    assert np.allclose(t.topk_weights[0], w.numpy(), atol=1e-6)  # scaling factor included, float32


def test_a_router_named_router_and_dbrx_p_norm():
    class DbrxFFN(nn.Module):  # a `router` returning logits, per-expert MLPs, DBRX's L1 norm
        def __init__(self):
            super().__init__()
            self.router = known_gate(0)
            self.experts = nn.ModuleList(ZeroExpert() for _ in range(E))
            self.top_k, self.moe_normalize_expert_weights = 2, 1.0

        def forward(self, x):
            self.router(x.reshape(-1, D))
            return torch.zeros_like(x)

    model = _wrap(DbrxFFN())
    rec = RoutingRecorder(model, record_weights=True)
    model(nn.functional.one_hot(torch.tensor([[2]]), D).float())
    t = rec.trace()
    assert rec.hooks[0].name == "layers.0.router" and t.topk_ids[0].tolist() == [[2, 3]]
    p = np.exp([10.0, 5.0]) / (np.exp(10) + np.exp(5) + 2)
    assert np.allclose(t.topk_weights[0, 0], p / p.sum(), atol=1e-6)  # top-k over its L1 norm


def test_logits_router_without_top_k_fails_at_construction_and_config_top_k_is_not_read():
    class Block(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.gate = nn.Linear(D, E, bias=False)
            self.experts = nn.ModuleList(ZeroExpert() for _ in range(E))
            self.config = config

    with pytest.raises(InputError, match="returns logits and its block says no top-k"):
        RoutingRecorder(_wrap(Block(types.SimpleNamespace(top_k=50))))  # a generation default, not the routing's
    rec = RoutingRecorder(_wrap(Block(types.SimpleNamespace(top_k=50, num_experts_per_tok=2))))
    assert rec.hooks[0].top_k == 2


def test_deepseek_logits_weights_include_routed_scaling_factor():
    gate = DeepseekV3TopkRouter()
    gate.routed_scaling_factor = 2.5
    block = DeepseekV3MoE(gate)
    block.num_experts_per_tok = 3
    model = _wrap(block)
    rec = RoutingRecorder(model, record_weights=True, auto_step=False)
    x = torch.randn(1, 8, D, generator=torch.Generator().manual_seed(3))
    model(x)
    rec.step()
    logits = nn.functional.linear(x.reshape(-1, D), gate.weight).detach()
    _, w = deepseek_topk(logits, 3, 4, 2, gate.e_score_correction_bias, True)
    assert np.allclose(rec.trace().topk_weights[0], 2.5 * w.numpy(), atol=1e-6)


def test_a_named_router_takes_top_k_and_norm_from_its_block():
    class DbrxFFN(nn.Module):  # transformers 5's DBRX block: the router returns logits, top_k on the block
        def __init__(self):
            super().__init__()
            self.router = known_gate(0)
            self.top_k, self.moe_normalize_expert_weights = 2, 1.0

        def forward(self, x):
            self.router(x.reshape(-1, D))
            return torch.zeros_like(x)

    model = _wrap(DbrxFFN())
    rec = RoutingRecorder(model, routers=["layers.0.router"], record_weights=True)
    assert rec.hooks[0].top_k == 2 and rec.hooks[0].norm_p == 1.0
    model(nn.functional.one_hot(torch.tensor([[1]]), D).float())
    w = rec.trace().topk_weights[0, 0]
    assert rec.trace().topk_ids[0].tolist() == [[1, 2]] and np.isclose(w.sum(), 1.0, atol=1e-6)
